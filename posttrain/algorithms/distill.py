"""Knowledge distillation: a student learns a teacher's next-token distributions on the dataset's
completions (off-policy), on its own samples (on-policy), or on a mix of both (GKD: Agarwal et al.
2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes").

Each generation batch is on-policy with probability ``lmbda``: the student samples
``num_generations`` completions per prompt at ``temperature``; otherwise the batch takes the
rows' own completions. The loss is, at every completion token, the divergence of the student's
next-token distribution from the teacher's (:mod:`posttrain.losses.distill`: forward KL, reverse
KL or the generalized JSD, chosen by ``beta``), both at ``temperature``, as one token mean over
the accumulated batch (docs/design.md, "Loss normalisation"). The two LM heads run side by side
over chunks of the completion positions (:class:`~posttrain.models.distill.DistillationStudent`),
so neither model's ``(B, T, V)`` logits exist. The teacher is frozen and never wrapped by
accelerate: it is run, not trained, and never saved with the student. Under sharding (``fsdp``)
it is sharded block by block like the student (``shard_frozen``); its root unit (embeddings,
final norm, head) is gathered for a step's micro-batches, since the chunked divergence re-runs
its head in backward, and released after the optimizer step.

Departures from GKD, on purpose:

- ``lmbda`` defaults to 1 (every batch on-policy: "on-policy distillation"), not 0.5, so prompt-
  only rows work without another option; the learning test measures that setting.
- Whether a batch is on-policy comes from a hash of ``(seed, step)``, not from the global RNG:
  it does not shift the sampling RNG, and a resumed run makes the same choice.
- No ``seq_kd`` (sampling the teacher every step): generate the teacher's completions once and
  give them as prompt-completion rows, which is the same data for a fraction of the cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from posttrain.algorithms.experience import Experience, MicroBatch, Samples, completion_view, micro_batch, split_micro_batches
from posttrain.algorithms.online import OnlineConfig, OnlineTrainer, Prepared
from posttrain.config import option
from posttrain.data.distill import prepare_distillation_data
from posttrain.errors import ConfigError
from posttrain.losses.distill import DivergenceOptions
from posttrain.models.distill import (
    DistillationStudent,
    check_head_covers,
    check_same_vocabulary,
    freeze_teacher,
    merge_adapters,
    release_teacher_head,
    teacher_states,
)
from posttrain.models.loading import is_path, load_causal_lm, load_tokenizer, set_chat_template, tokenizer_source
from posttrain.options import require
from posttrain.rollout import Completion
from posttrain.train.loop import BatchSource
from posttrain.train.metrics import Metric, MetricAccumulator
from posttrain.train.sharding import shard_frozen
from posttrain.train.state import TrainState


@dataclass
class DistillationConfig(OnlineConfig):
    """Distillation options (plus the online and TrainConfig options)."""

    learning_rate: float = option(1e-5, "Peak learning rate (AdamW).")
    teacher_model: str | None = option(None, "The teacher: a path or hub name with the student's tokenizer (a LoRA adapter directory is merged into its base). Python callers may pass a model object as DistillationTrainer(teacher_model=...).")
    lmbda: float = option(1.0, "Share of generation batches whose completions the student samples (on-policy); the others take the rows' completions (off-policy). GKD's lambda. Below 1 the rows need completions.", range="[0, 1]")
    beta: float = option(0.5, "The divergence: 0 forward KL(teacher || student), 1 reverse KL(student || teacher), in between the generalized Jensen-Shannon divergence of GKD.", range="[0, 1]")
    teacher_top_k: int | None = option(None, "Compare with the teacher's k most likely tokens only, renormalised: an approximation (README, Distillation); None compares whole distributions.")
    num_generations: int = option(1, "Completions the student samples per prompt in an on-policy batch.", range="[1, inf)")

    def __post_init__(self):
        super().__post_init__()
        try:
            DivergenceOptions(self.beta, self.temperature, self.teacher_top_k)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        require(
            (not self.reward_funcs, "distillation learns from the teacher, not from rewards: remove reward_funcs"),
            (self.num_generations == 1 or self.lmbda == 1.0, f"num_generations={self.num_generations} with lmbda={self.lmbda}: an off-policy batch has one completion per prompt; use num_generations=1 or lmbda=1"),
        )

    @property
    def divergence(self) -> DivergenceOptions:
        return DivergenceOptions(self.beta, self.temperature, self.teacher_top_k)


class DistillationTrainer(OnlineTrainer):
    """``DistillationTrainer(student, DistillationConfig(teacher_model=...), train_dataset=rows).train()``.

    Rows are prompt-only (on-policy) or prompt-completion (off-policy or mixed, by ``lmbda``).
    ``teacher_model``: the teacher as a path, hub name or model object (default: the config's);
    ``teacher_tokenizer``: its tokenizer, when a model object does not say where it was loaded
    from (it must equal the student's)."""

    config_class = DistillationConfig
    prompt_groups_unsupported = "the loss runs the teacher on the same packed or padded rows"

    def __init__(self, model=None, config=None, *, teacher_model=None, teacher_tokenizer=None, **kwargs):
        self._teacher_source, self._teacher_tokenizer = teacher_model, teacher_tokenizer
        super().__init__(model, config, **kwargs)

    # ------------------------------------------------------------------ models and data

    def load_model(self, model):
        student = super().load_model(model)
        self.teacher, self.vocab_size = self._load_teacher(student)
        return student

    def _load_teacher(self, student):
        """The frozen teacher (a :class:`TokenLogProbs` on the device) and the vocabulary size the
        two models share, checked."""
        cfg = self.config
        source = self._teacher_source if self._teacher_source is not None else cfg.teacher_model
        if source is None:
            raise ConfigError("no teacher: set teacher_model (a path or hub name) or pass DistillationTrainer(..., teacher_model=<model>)")
        teacher = merge_adapters(load_causal_lm(source, model_dtype=cfg.model_dtype, attn_implementation=cfg.attn_implementation))
        where = tokenizer_source(source) if is_path(source) else tokenizer_source(teacher)
        tokenizer = load_tokenizer(self._teacher_tokenizer, where) if (self._teacher_tokenizer is not None or where) else self.tokenizer
        vocab_size = check_same_vocabulary(self.tokenizer, tokenizer)
        check_head_covers(student, vocab_size, "student")
        check_head_covers(teacher, vocab_size, "teacher")
        self.check_packing(teacher)
        return freeze_teacher(teacher.to(self.accelerator.device)), vocab_size

    def _teacher_module(self):
        """The teacher; under sharding (FSDP2) sharded like the student on first use, its blocks
        released after each forward and its root unit after each step (:meth:`optimizer_step`)."""
        from torch.distributed.fsdp import FSDPModule

        if self.accelerator.is_fsdp2 and not isinstance(self.teacher, FSDPModule):
            self.teacher = shard_frozen(self.accelerator, self.teacher, reshard_root_after_forward=False)
        return self.teacher

    def optimizer_step(self, run, window: list, metrics=None) -> None:
        # the chunked divergence re-runs the teacher's head in backward, so a sharded teacher's
        # root unit stays gathered through the step's micro-batches and is released here
        try:
            super().optimizer_step(run, window, metrics)
        finally:
            release_teacher_head(self.teacher)

    def wrap_model(self, model) -> torch.nn.Module:
        self.check_packing(model)
        return DistillationStudent.for_config(model, self.config)

    def build_batch_source(self, rows, split: str) -> BatchSource | None:
        cfg = self.config
        if any(self._tool_arguments) or cfg.tools or cfg.environment_factory:
            # the student's episodes would need the teacher scored on them (not built yet): refused, never ignored
            raise ConfigError("distillation does not run multi-turn episodes yet: remove tools / environment_factory (GRPO, PPO and RLOO take them)")
        set_chat_template(self.tokenizer, cfg.chat_template)
        data = prepare_distillation_data(
            rows, self.tokenizer, max_completion_length=cfg.max_completion_length, max_prompt_length=cfg.max_prompt_length,
            system_prompt=cfg.system_prompt, chat_template_kwargs=cfg.chat_template_kwargs,
        )
        self.reporter.print(f"[bold]{split} data[/] ({data.data_format}):")
        for line in data.lines():
            self.reporter.print(f"  {line}")
        if split == "train":
            if cfg.lmbda < 1.0 and not data.has_completions:
                raise ConfigError(
                    f"lmbda={cfg.lmbda} asks for off-policy batches, which score the rows' completions, but the rows have no "
                    "'completion'. Fix: set lmbda=1 (the student samples every completion) or give prompt-completion rows"
                )
            self._columns, self._conversational = [], data.data_format.conversational
            self._prompt_capacity = max(len(item["prompt_ids"]) for item in data.items)
        return BatchSource(data.items, [len(item["prompt_ids"]) for item in data.items], list)

    # ------------------------------------------------------------------ experience

    def on_policy(self, step: int) -> bool:
        """Whether the generation batch made at optimizer step ``step`` is the student's own: a
        uniform draw from ``(seed, step)`` below ``lmbda`` (the same on every process and after
        a resume, and independent of the sampling RNG)."""
        return random.Random(f"{self.config.seed}:{step}").random() < self.config.lmbda

    def sample(self, stream) -> Samples:
        """The next prompts with the student's completions (on-policy) or the rows' own."""
        return self._samples(next(stream), self.on_policy(self.state.step))

    def _samples(self, items: list[dict], on_policy: bool, greedy: bool = False) -> Samples:
        """``items`` with the student's completions (``num_generations`` each; one greedy one
        with ``greedy``) or with their own."""
        size = 1 if greedy or not on_policy else self.config.num_generations
        if on_policy:
            completions = self.sample_completions([item["prompt_ids"] for item in items], self.sampling_options(greedy=greedy), size)
            items = [item for item in items for _ in range(size)]
        else:
            completions = [self._dataset_completion(item) for item in items]
        rewards = [[0.0] * len(c.token_ids) for c in completions]
        return Samples(items, completions, rewards, None, size, {"on_policy": float(on_policy)})

    def _dataset_completion(self, item: dict) -> Completion:
        ids, mask = item["completion_ids"], item["completion_mask"]
        return Completion(
            list(ids), self.tokenizer.decode(ids, skip_special_tokens=True), "length" if item["completion_cut"] else "eos",
            None if all(mask) else tuple(mask),
        )

    def make_experience(self, samples: Samples, state: TrainState) -> Prepared:
        """The completion mask: the teacher is run in :meth:`compute_loss`, where its hidden
        states are used at once (an ``(N, L, H)`` copy in the experience would outweigh them)."""
        return Prepared(Experience.from_samples(samples, self.config.mask_truncated_completions), {}, {})

    # ------------------------------------------------------------------ the update

    def compute_loss(self, module, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Metric]]:
        """The token-summed divergence of the batch's completion tokens (the teacher's body runs
        here, without gradient, on the same packed rows) and its statistics."""
        device = self.accelerator.device
        positions = batch.completion_positions.to(device)
        inputs = {"input_ids": batch.input_ids.to(device), "position_ids": batch.position_ids.to(device), "attention_mask": None}
        states, head = teacher_states(self._teacher_module(), inputs, positions)
        stats = module(
            **inputs, positions=positions, teacher_states=states, teacher_head=head, options=self.config.divergence,
            vocab_size=self.vocab_size, with_stats=True,
        )

        def view(values: torch.Tensor) -> torch.Tensor:
            """``(n,)`` values at ``positions`` -> the ``(S, L)`` completion view."""
            placed = torch.zeros(batch.input_ids.numel(), dtype=torch.float32, device=device).index_copy(0, positions, values.float())
            return completion_view(placed.reshape(batch.input_ids.shape), batch.completion_index)

        divergence = view(stats.divergence)
        mask = batch.completion_mask.to(device)
        tokens = mask.sum()
        metrics = {
            "entropy": Metric.mean((view(stats.student_entropy) * mask).sum(), tokens),
            "teacher_entropy": Metric.mean((view(stats.teacher_entropy) * mask).sum(), tokens),
            "agreement": Metric.mean((view(stats.agreement) * mask).sum(), tokens),
        }
        return self.reduce(divergence, batch, metrics)

    @torch.no_grad()
    def compute_eval_metrics(self) -> dict[str, float]:
        """The divergence and its statistics on the evaluation rows: on their own completions
        when they have them (the same tokens at every evaluation), else on the student's greedy
        completions; ``eval/loss``, ``eval/agreement``, ``eval/entropy``, ``eval/teacher_entropy``."""
        if self.eval_source is None:
            return {}
        items, counted, accumulator = list(self.eval_source.dataset), list(self._generation), MetricAccumulator()
        module = getattr(self, "module", None) or self._module_before_training()
        with self.accelerator.split_between_processes(items) as mine:
            if mine:
                experience = Experience.from_samples(self._samples(mine, on_policy=items[0]["completion_ids"] is None, greedy=True))
                for rows in split_micro_batches(range(len(experience)), self.config.per_device_eval_batch_size):
                    batch = micro_batch(experience, rows, self.tokenizer.pad_token_id, self._row_capacity())
                    accumulator.update(self.compute_loss(module, batch)[1])
                release_teacher_head(self.teacher)
        self._generation = counted  # evaluation is not part of the next generation batch
        return {f"eval/{name}": value for name, value in accumulator.compute(self.accelerator).items()}

    # ------------------------------------------------------------------ completion log

    def log_completions(self, state: TrainState, samples: Samples, columns: dict[str, list[float]], steps: int) -> None:
        """Prompt, completion, whether the student wrote it, and ``teacher_logp`` (the teacher's
        summed log-prob of the completion, at temperature 1), when the log is due at one of the
        next ``steps`` steps (the teacher pass runs only then)."""
        due = next((s for s in range(state.step + 1, state.step + 1 + steps) if self.completion_log.due(s)), None)
        if due is None:
            return
        teacher_logps = self.teacher_sequence_logps(self.buffer.experience).tolist()
        on_policy = bool(samples.stats["on_policy"])
        rows = [
            {"prompt": item["prompt"], "completion": completion.text, "student_wrote_it": on_policy, "teacher_logp": logp}
            for item, completion, logp in zip(samples.items, samples.completions, teacher_logps)
        ]
        self.completion_log.log(due, rows)

    def teacher_sequence_logps(self, experience: Experience) -> torch.Tensor:
        """``(N,)`` the teacher's summed log-probs of the experience's completion tokens (those in
        the completion mask), at temperature 1."""

        def forward(ids, positions, scored):
            return {"logps": self._teacher_module()(ids, positions, positions=scored).logps}

        logps = self.scoring_pass(experience, forward)["logps"]
        release_teacher_head(self.teacher)
        return (logps * experience.completion_mask).sum(dim=1)
