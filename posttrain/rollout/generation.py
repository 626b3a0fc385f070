"""The Hugging Face generation engine: ``transformers`` ``generate`` with the KV cache.

Rollouts (GRPO, PPO) and greedy evaluation (:mod:`posttrain.tasks.evaluate`) both generate
here, so the project has one generation path.

- **Batches** of ``batch_size`` sequences are left-padded here, with an attention mask, so
  every row's next token is produced in the last column; the tokenizer's ``padding_side`` is
  never touched.
- **Modes.** The model runs in eval mode (no dropout) under ``torch.no_grad``, and every
  submodule's own train/eval flag is put back afterwards (a frozen submodule kept in eval mode
  stays so). Not ``torch.inference_mode``: tensors made under it can never enter autograd,
  and trainers build on what generation returns.
- **Wrappers.** DDP / DataParallel / DeepSpeed / ``torch.compile`` wrappers (what
  ``accelerator.prepare`` returns) are removed with accelerate's ``extract_model_from_parallel``
  (or the ``unwrap`` / ``accelerator.unwrap_model`` given); a peft model generates through its
  own ``generate``, adapters active. A sharded model (FSDP) generates from its whole weights,
  gathered for each ``generate`` call by the ``weights`` context the trainer gives the engine
  (:mod:`posttrain.train.whole_weights`).
- **Options** are passed to ``generate`` per call, including neutral values (``top_k=0``),
  so a model's ``generation_config`` neither leaks into a rollout nor is ever modified.
- **Stopping.** EOS ids (the tokenizer's, the model's ``generation_config`` ones and
  ``stop_token_ids``) through ``eos_token_id``; stop strings through ``transformers``'
  ``StopStringCriteria`` (what ``generate(stop_strings=..., tokenizer=...)`` builds), wrapped
  to record the step at which each row matched: ``generate`` pads a finished row with the pad
  token and does not say why it finished, and a pad tail alone cannot tell a stop string
  from a model that generated pad tokens.
- **Sampling** draws from torch's global RNG (no private generator), so accelerate's
  checkpoint of the RNG states makes a resumed run sample the same completions.
- **Paths.** The cache (dynamic or static), a compiled decoding step, continuous batching, and a
  prompt prefill shared by a group's completions are chosen per device
  (:mod:`posttrain.rollout.decoding`); what does not apply is noted once, in one line.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from posttrain.rollout.decoding import (
    GENERATION_PATHS,
    GenerationPlan,
    compile_config,
    continuous_batching_problem,
    plan_generation,
    prefilled_cache,
)
from posttrain.rollout.engine import GenerationStats, check_prompt_ids
from posttrain.rollout.sampling import Completion, SamplingOptions


def left_pad(batch_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(B, T)`` with ``T`` the longest row, padded on
    the left so that every row's next token is generated in the same (last) column."""
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in batch_ids], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], dtype=torch.long)
    return input_ids, attention_mask


def split_completion(new_ids: list[int], stop_ids: set[int], stop_string_at: int) -> tuple[list[int], str]:
    """Cut one row of generated ids where it finished: ``(token_ids, finish_reason)``.

    ``stop_string_at`` is the index of the token that completed a stop string, -1 if none did.
    The earlier of that and the first stop token id wins; on the same token the stop id does
    ("eos"). Neither: the row ran to the end ("length"), every id is real.
    """
    eos_at = next((i for i, token in enumerate(new_ids) if token in stop_ids), -1)
    if eos_at >= 0 and (stop_string_at < 0 or eos_at <= stop_string_at):
        return new_ids[: eos_at + 1], "eos"
    if stop_string_at >= 0:
        return new_ids[: stop_string_at + 1], "stop"
    return new_ids, "length"


def _eos_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def stop_token_ids(tokenizer, model, extra: Sequence[int] = ()) -> list[int]:
    """Ids that end a completion: the tokenizer's EOS, the model's ``generation_config``
    EOS ids (chat models often list their end-of-turn token there), then ``extra``; no repeats."""
    generation_config = getattr(model, "generation_config", None)
    ids: list[int] = []
    for token in [*_eos_ids(tokenizer.eos_token_id), *_eos_ids(getattr(generation_config, "eos_token_id", None)), *extra]:
        if token not in ids:
            ids.append(int(token))
    return ids


class StopStringRecorder:
    """A stopping criterion that applies ``transformers``' ``StopStringCriteria`` and records,
    per row, the index (within the completion) of the first token that completed a stop string.
    (``generate`` calls criteria as ``criterion(input_ids, scores) -> (B,) bool``; not
    subclassing ``StoppingCriteria`` keeps transformers out of this module's import.)

    ``first_hit`` is ``(B,)`` long, -1 where no stop string matched; call :meth:`start` with the
    padded prompt width before each batch.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        from transformers import StopStringCriteria

        self.criterion = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))
        self.prompt_width = 0
        self.first_hit: torch.Tensor | None = None

    def start(self, prompt_width: int) -> None:
        self.prompt_width = prompt_width
        self.first_hit = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        hit = self.criterion(input_ids, scores, **kwargs)
        if self.first_hit is None:
            self.first_hit = torch.full((input_ids.shape[0],), -1, dtype=torch.long, device=input_ids.device)
        position = input_ids.shape[1] - self.prompt_width - 1
        self.first_hit = torch.where((self.first_hit < 0) & hit, position, self.first_hit)
        return hit


@contextmanager
def generation_mode(model: nn.Module):
    """Eval mode and no grad for the block; each submodule's own train/eval flag restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def default_unwrap(model: nn.Module) -> nn.Module:
    """The module to call ``generate`` on: DDP / DataParallel / DeepSpeed / compile wrappers
    removed (accelerate's mixed-precision forward kept, so generation runs at training precision)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _device_of(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


class HFGenerationEngine:
    """Generation with ``transformers`` ``generate`` (see the module docstring).

    Args:
        model: the causal LM to sample from; a peft model, or wrapped by accelerate / DDP.
        tokenizer: its tokenizer (never modified).
        batch_size: sequences (prompts x generations) per ``generate`` call.
        unwrap: ``model -> module with .generate``; default removes DDP-style wrappers.
        accelerator: an ``accelerate.Accelerator``; its ``unwrap_model`` is used as ``unwrap``.
        weights: ``() -> context manager`` entered around each ``generate`` call (by every
            process together); it gives the module to generate with (whole weights gathered
            from a sharded model), or None for ``model`` itself.
        path: one of :data:`~posttrain.rollout.decoding.GENERATION_PATHS` (``auto``: the
            measured default of the model's device).
        share_prompt_prefill: run each prompt once through the model for all its generations.
        notify: ``(line) -> None``, told once per distinct note on a path that did not apply
            (default: :func:`warnings.warn`).

    ``last_stats`` holds the :class:`GenerationStats` of the latest :meth:`generate` call and
    ``plan`` its :class:`~posttrain.rollout.decoding.GenerationPlan`.
    """

    holds_weights = False  # it generates with the live module (or, sharded, whole weights gathered from it)

    def __init__(
        self, model: nn.Module, tokenizer, batch_size: int = 64, unwrap: Callable | None = None, accelerator=None, weights: Callable | None = None,
        path: str = "auto", share_prompt_prefill: bool = True, notify: Callable[[str], None] | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if unwrap is not None and accelerator is not None:
            raise ValueError("pass unwrap or accelerator, not both")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.unwrap = accelerator.unwrap_model if accelerator is not None else (unwrap or default_unwrap)
        self.last_stats = GenerationStats()
        self._recorders: dict[tuple[str, ...], StopStringRecorder] = {}
        self.weights = weights
        if path not in GENERATION_PATHS:  # a bad name fails here, not at the first rollout
            raise ValueError(f"path must be one of {GENERATION_PATHS}, got {path!r}")
        self.path, self.share_prompt_prefill = path, share_prompt_prefill
        self.notify = notify or (lambda line: warnings.warn(line, stacklevel=3))
        self.plan: GenerationPlan | None = None
        self._noted: set[str] = set()

    def update_weights(self, model: nn.Module | None = None) -> None:
        """Nothing to copy: generation uses the live module. Passing another model object (e.g.
        the one ``accelerator.prepare`` returned) makes the engine generate with that one."""
        if model is not None:
            self.model = model

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], options: SamplingOptions, num_generations: int = 1
    ) -> list[Completion]:
        """``len(prompt_ids) * num_generations`` completions, those of prompt ``i`` at
        ``[i * num_generations, (i + 1) * num_generations)``."""
        if not isinstance(options, SamplingOptions):
            raise TypeError(f"options must be a SamplingOptions, got {type(options).__name__}")
        rows = [ids for ids in check_prompt_ids(prompt_ids, num_generations) for _ in range(num_generations)]
        started = time.perf_counter()
        with (self.weights() if self.weights is not None else nullcontext()) as gathered:
            model = gathered if gathered is not None else self.unwrap(self.model)
            stop_ids = stop_token_ids(self.tokenizer, model, options.stop_token_ids)
            pad_id = self._pad_id(stop_ids)
            recorder = self._recorder(options.stop_strings)
            plan = self._plan(model, options)
            completions: list[Completion] = []
            with generation_mode(self.model if gathered is None else gathered):
                if plan.path == "continuous_batching":
                    completions = self._generate_continuous(model, rows, options, stop_ids, pad_id, num_generations)
                for start in range(0, len(rows) if plan.path != "continuous_batching" else 0, self.batch_size):
                    batch = rows[start : start + self.batch_size]
                    completions += self._generate_batch(model, batch, options, stop_ids, pad_id, recorder, plan)
        self.last_stats = GenerationStats(
            sequences=len(completions),
            tokens=sum(len(c.token_ids) for c in completions),
            seconds=time.perf_counter() - started,
        )
        return completions

    def _plan(self, model, options: SamplingOptions) -> GenerationPlan:
        """The plan of this call; its notes go to ``notify``, each once."""
        self.plan = plan_generation(self.path, model, _device_of(model), options, self.share_prompt_prefill)
        for note in self.plan.notes:
            if note not in self._noted:
                self._noted.add(note)
                self.notify(note)
        return self.plan

    def _pad_id(self, stop_ids: list[int]) -> int:
        if self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        if stop_ids:
            return stop_ids[0]
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")

    def _recorder(self, stop_strings: tuple[str, ...]) -> StopStringRecorder | None:
        # Building StopStringCriteria scans the vocabulary; keep one per set of stop strings.
        if not stop_strings:
            return None
        if stop_strings not in self._recorders:
            self._recorders[stop_strings] = StopStringRecorder(self.tokenizer, stop_strings)
        return self._recorders[stop_strings]

    def _generate_batch(self, model, batch, options: SamplingOptions, stop_ids, pad_id, recorder, plan: GenerationPlan) -> list[Completion]:
        device = _device_of(model)
        input_ids, attention_mask = (t.to(device) for t in left_pad(batch, pad_id))
        kwargs = generate_kwargs(model, options, stop_ids, pad_id)
        if recorder is not None:
            from transformers import StoppingCriteriaList

            recorder.start(input_ids.shape[1])
            kwargs["stopping_criteria"] = StoppingCriteriaList([recorder])
        if plan.path == "static_compiled":
            kwargs["compile_config"] = compile_config(device)
        cache = prefilled_cache(model, plan, input_ids, attention_mask, options.max_completion_length)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences  # (B, T + new)
        new_rows = sequences[:, input_ids.shape[1] :].tolist()
        hits = [-1] * len(new_rows) if recorder is None or recorder.first_hit is None else recorder.first_hit.tolist()
        return [self._completion(new_ids, set(stop_ids), hit) for new_ids, hit in zip(new_rows, hits)]

    def _completion(self, new_ids: list[int], stop_set: set[int], stop_string_at: int = -1) -> Completion:
        token_ids, reason = split_completion(new_ids, stop_set, stop_string_at)
        return Completion(token_ids, self.tokenizer.decode(token_ids, skip_special_tokens=True), reason)

    def _generate_continuous(self, model, rows, options: SamplingOptions, stop_ids, pad_id, num_generations: int) -> list[Completion]:
        """Every row through transformers' continuous batching (``generate_batch``), each prompt
        once with ``num_generations`` forks; ``batch_size`` does not apply (the paged cache
        schedules the sequences)."""
        from transformers import GenerationConfig

        problem = continuous_batching_problem(model, options)
        if problem is not None:  # options differ from the ones the plan was made for
            raise ValueError(f"generation_path='continuous_batching' cannot run: {problem}")
        # greedy completions of one prompt are all the same: each prompt is generated once, repeated
        forks = num_generations if options.do_sample else 1
        sampling = {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k or 0} if options.do_sample else {}
        config = GenerationConfig(
            max_new_tokens=options.max_completion_length, do_sample=options.do_sample, eos_token_id=stop_ids or None,
            pad_token_id=pad_id, num_return_sequences=forks, **sampling,
        )
        prompts = rows[::num_generations]
        results = list(model.generate_batch(prompts, generation_config=config, continuous_batching_config=paged_cache_config(rows, options), progress_bar=False, warmup=False).values())
        if len(results) != len(prompts) * forks or any(r.error for r in results):
            errors = [r.error for r in results if r.error]
            raise RuntimeError(f"continuous batching returned {len(results)} of {len(prompts) * forks} completions; errors: {errors[:3]}")
        # generate_batch lists a prompt's forks first and the prompt's own request last; any order
        # of a group's completions is the same sample, and the group stays contiguous
        completions = [self._completion(list(result.generated_tokens), set(stop_ids)) for result in results]
        return [c for c in completions for _ in range(num_generations // forks)]


def paged_cache_config(rows: list[list[int]], options: SamplingOptions):
    """A ``ContinuousBatchingConfig`` whose paged cache holds every row at once and no more
    (sized from free device memory otherwise: gigabytes allocated per call on a CPU)."""
    from transformers import ContinuousBatchingConfig

    page = 256
    longest = max(len(ids) for ids in rows) + options.max_completion_length
    return ContinuousBatchingConfig(
        page_size=page, num_blocks=len(rows) * -(-longest // page) + 1, max_batch_tokens=max(sum(len(ids) for ids in rows), len(rows)),
    )


def generate_kwargs(model, options: SamplingOptions, stop_ids: list[int], pad_id: int) -> dict:
    """Keyword arguments for ``model.generate`` (besides the inputs and stopping criteria).

    Sampling knobs are given explicitly, neutral values included, because ``generate`` fills
    every knob left out from ``model.generation_config`` (transformers' own default is
    ``top_k=50``).
    """
    kwargs = {
        "max_new_tokens": options.max_completion_length,
        "do_sample": options.do_sample,
        "repetition_penalty": options.repetition_penalty,
        "eos_token_id": stop_ids or None,
        "pad_token_id": pad_id,
        "use_cache": True,
    }
    if options.do_sample:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or 0)
        model_min_p = getattr(getattr(model, "generation_config", None), "min_p", None)
        if options.min_p is not None or model_min_p is not None:
            # 0.0 keeps every token: "off", without inheriting the model's own min_p.
            kwargs["min_p"] = options.min_p if options.min_p is not None else 0.0
    kwargs.update(options.generation_kwargs)
    return kwargs
