"""The ways :class:`~posttrain.rollout.generation.HFGenerationEngine` can run transformers'
generation (its *paths*), which one runs where, and the prompt prefill shared by a group.

Paths (``generation_path``), all through transformers' ``generate``:

- ``dynamic``: ``generate`` with a ``DynamicCache`` (transformers' default). Every decoding step
  concatenates the new keys and values onto the cache, copying all of it.
- ``static``: ``generate`` with a static cache sized once (prompt width + new tokens); each
  step writes its keys and values in place, and attention reads only the filled slots
  (:class:`~posttrain.rollout.filled_cache.FilledStaticCache`; transformers' ``StaticCache``
  hands it every slot, the empty ones masked). Not compiled.
- ``static_compiled``: the static cache and the decoding step compiled by ``torch.compile``
  (transformers' ``CompileConfig``; on a GPU with CUDA graphs). Shapes must stay put for the
  compiled step to be reused, so the cache length is rounded up to a multiple of
  :data:`COMPILED_CACHE_MULTIPLE`; the first call of each new shape pays the compile time
  (tens of seconds on a CPU).
- ``continuous_batching``: transformers' ``generate_batch`` (paged attention: a sequence that
  has finished stops costing compute; a group's completions fork from one prompt prefill). It
  samples with its own per-request logits processors, so its sampled completions are drawn from
  the same distribution as ``generate``'s but not with the same random numbers; greedy ones are
  the same. It supports temperature, top-k, top-p and stop token ids only.
- ``auto``: :func:`default_path` for the model's device, chosen by measurement
  (``benchmarks/generation_paths.py``; README, "Online RL at speed").

**Shared prompt prefill** (``share_prompt_prefill``): the ``G`` completions of a prompt start
from the same prompt, so the dynamic and static paths run the prompt (all but its last token)
once through the model into the cache, repeat each row's cache ``G`` times
(``Cache.batch_select_indices``) and let ``generate`` continue from there. The maths is that of
the plain path; completions are the same token for token (tested).

A path that does not apply (a model whose cache cannot be static, options that continuous
batching does not support, a device that cannot compile) is an error when asked for by name, and
with ``auto`` falls back to the next one with a one-line note (:attr:`GenerationPlan.notes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.models.prompt_groups import plain_cache_problem, position_ids_of

GENERATION_PATHS = ("auto", "dynamic", "static", "static_compiled", "continuous_batching")
# The compiled decoding step is specialised to the cache length: rounding it up to a multiple of
# this keeps one compiled step for prompts of similar width.
COMPILED_CACHE_MULTIPLE = 64


def default_path(device: torch.device) -> str:
    """The path ``auto`` means on ``device``'s type (README, "Online RL at speed").

    CPU: ``static``, measured fastest: decoding a small model there is bound by memory traffic,
    and the static path neither copies the cache every step (as ``dynamic`` does) nor reads its
    empty slots (as transformers' ``StaticCache`` does); ``static_compiled`` pays tens of seconds
    of compile per new shape; continuous batching ran several times slower. Other devices:
    ``static`` too, until ``benchmarks/gpu_check.sh`` has measured the paths on a GPU:
    ``static_compiled`` (transformers' fast path there, CUDA graphs) pays a compile per new shape
    that a default should not impose unmeasured; ask for it by name.
    """
    return "static"


@dataclass(frozen=True)
class GenerationPlan:
    """How one ``generate`` call runs: ``path`` (never ``auto``), whether the prompt prefill is
    shared by a group's completions, and the notes on what was asked for and did not apply."""

    path: str
    share_prompt_prefill: bool
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        shared = ", prompt prefill shared by each group" if self.share_prompt_prefill else ""
        return f"generation path: {self.path}{shared}"


def _static_cache_problem(model) -> str | None:
    """Why ``model`` cannot generate with a ``StaticCache``, or None."""
    if getattr(model.config, "is_encoder_decoder", False):
        return f"{type(model).__name__} is an encoder-decoder model"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not declare support for a static cache (_can_compile_fullgraph)"
    return None


def continuous_batching_problem(model, options) -> str | None:
    """Why transformers' continuous batching cannot give what ``options`` ask for, or None."""
    if not hasattr(model, "generate_batch"):
        return f"{type(model).__name__} has no generate_batch"
    unsupported = [
        name
        for name, used in (
            ("stop_strings", bool(options.stop_strings)),
            ("generation_kwargs", bool(options.generation_kwargs)),
            ("repetition_penalty", options.repetition_penalty != 1.0),
            ("min_p", options.min_p is not None),
        )
        if used
    ]
    return f"it does not support {', '.join(unsupported)}" if unsupported else None


def _compile_problem(device: torch.device) -> str | None:
    if torch.device(device).type == "cpu":
        import shutil

        if shutil.which("c++") is None and shutil.which("g++") is None:
            return "torch.compile on CPU needs a C++ compiler (none on PATH)"
    return None


def plan_generation(requested: str, model, device, options, share_prompt_prefill: bool) -> GenerationPlan:
    """The :class:`GenerationPlan` for ``requested`` (one of :data:`GENERATION_PATHS`).

    Raises ValueError when a path asked for by name cannot run (the message names the option and
    the fix); ``auto`` falls back instead, each step down noted."""
    if requested not in GENERATION_PATHS:
        raise ValueError(f"generation_path must be one of {GENERATION_PATHS}, got {requested!r}")
    notes: list[str] = []
    path = default_path(device) if requested == "auto" else requested
    checks = {
        "continuous_batching": lambda: continuous_batching_problem(model, options),
        "static_compiled": lambda: _static_cache_problem(model) or _compile_problem(device),
        "static": lambda: _static_cache_problem(model),
    }
    fallback = {"continuous_batching": "static", "static_compiled": "static", "static": "dynamic"}
    while path in checks:
        problem = checks[path]()
        if problem is None:
            break
        if requested != "auto":
            raise ValueError(f"generation_path={requested!r} cannot run: {problem}. Fix: generation_path='auto' or 'dynamic'")
        notes.append(f"generation path {path} does not apply ({problem}); using {fallback[path]}")
        path = fallback[path]
    share = share_prompt_prefill and path != "continuous_batching"  # continuous batching forks groups itself
    if share and (problem := plain_cache_problem(model)) is not None:
        notes.append(f"the prompt prefill is not shared by a group's completions ({problem})")
        share = False
    return GenerationPlan(path, share, tuple(notes))


def compile_config(device):
    """transformers' ``CompileConfig`` for the compiled decoding step on ``device`` (one equal
    config per call keeps transformers' compiled step: it recompiles when the config changes)."""
    from transformers import CompileConfig

    on_cuda = torch.device(device).type == "cuda"
    config = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead" if on_cuda else "default")
    # transformers compiles generation on accelerators only unless told otherwise
    config._compile_all_devices = True
    return config


def cache_length(prompt_width: int, max_new_tokens: int, compiled: bool) -> int:
    """Tokens a static cache holds: the prompt width and the new tokens, rounded up to a multiple
    of :data:`COMPILED_CACHE_MULTIPLE` for the compiled path (stable shapes, one compiled step)."""
    length = prompt_width + max_new_tokens
    if compiled:
        length = -(-length // COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
    return length


def prompt_runs(rows: list[list[int]]) -> list[int]:
    """Lengths of the runs of equal consecutive rows: ``[3, 1]`` for ``[a, a, a, b]``."""
    runs: list[int] = []
    for index, row in enumerate(rows):
        if index and row == rows[index - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def prefilled_cache(model, plan: GenerationPlan, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int):
    """The cache ``generate`` continues from: empty, or, when the plan shares the prompt prefill
    and some rows repeat, holding the keys and values of every row's prompt but its last token,
    each run of equal rows computed once.

    ``input_ids`` and ``attention_mask`` are the left-padded batch ``(B, W)``. ``generate`` then
    feeds the last column with the same positions as for the whole prompt.
    """
    from transformers import DynamicCache, StaticCache

    from posttrain.rollout.filled_cache import FilledStaticCache

    width = input_ids.shape[1]
    cache = None
    if plan.path in ("static", "static_compiled"):
        compiled = plan.path == "static_compiled"
        cache = (StaticCache if compiled else FilledStaticCache)(config=model.config, max_cache_len=cache_length(width, max_new_tokens, compiled))
    runs = prompt_runs(input_ids.tolist()) if plan.share_prompt_prefill and width > 1 else []
    if len(runs) == len(input_ids) or not runs:  # nothing repeats
        return cache if cache is not None else DynamicCache(config=model.config)
    device = input_ids.device
    starts = torch.tensor([0, *runs[:-1]], device=device).cumsum(0)
    ids, mask = input_ids[starts, :-1], attention_mask[starts, :-1]
    once = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=position_ids_of(mask), cache=once, use_cache=True)
    repeat = torch.repeat_interleave(torch.arange(len(runs), device=device), torch.tensor(runs, device=device))
    if cache is None:
        once.batch_select_indices(repeat)
        return once
    for index, layer in enumerate(once.layers):
        cache.update(layer.keys.index_select(0, repeat), layer.values.index_select(0, repeat), index)
    return cache
