"""How the update lays out a micro-batch of experience (option ``update_layout``; docs/design.md,
"Online RL").

Three layouts compute the same losses and gradients (tested to float tolerance):

- ``packed``: prompt + completion of each sequence packed into rows of the longest prompt +
  ``max_completion_length`` tokens (few pad tokens; a row holding several sequences needs a
  block-diagonal mask on CPU, and attention under a mask runs over the whole row).
- ``padded``: one sequence per right-padded row (pads up to the longest sequence; plain causal
  attention, which skips the upper triangle).
- ``prompt_groups``: each prompt once, its completions after it through a cache
  (:mod:`posttrain.models.prompt_groups`): the ``G - 1`` repeated prompts of a GRPO group are not
  run at all, since their tokens carry no loss. Not with a value head on the policy (PPO),
  distillation (its loss runs the teacher on the same rows), gradient checkpointing, sharding,
  or one completion per prompt.

``auto`` (default) takes, for every micro-batch, the layout that applies with the fewest
floating-point operations counted from its shape (:func:`layout_costs`): the matmuls of every
token slot the layout runs (pads included) and attention as the kernels run it (half the
square under plain causal attention, all of it under a mask). The count is a function of the
data, so runs choose the same way every time and a resumed run as the uninterrupted one.
A count is not a time (kernels differ in efficiency per FLOP): ``measure`` is there for a device
where the two disagree (README, "Online RL at speed").

``measure`` times one forward and backward of the first micro-batch in each layout that applies
(twice each, alternating, the shorter time counts; processes take the slowest process's time),
keeps the fastest for the run, says so in one line and records it with the experience in every
checkpoint (a resumed run keeps it; two fresh runs may choose differently, so their floats may
differ). Timing does not touch the random number generators, the gradients or the metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from posttrain.data.packing import best_fit_decreasing
from posttrain.errors import ConfigError

LAYOUTS = ("packed", "padded", "prompt_groups")  # the order breaks ties in the count
UPDATE_LAYOUTS = ("auto", *LAYOUTS, "measure")


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count of a forward pass needs: ``linear_parameters`` (the matmul weights
    every token runs through, embeddings and LM head left out: the head runs on completion
    tokens only in every layout), ``attention_width`` (query heads x head size) and ``layers``."""

    linear_parameters: int
    attention_width: int
    layers: int

    @classmethod
    def of(cls, model) -> ModelShape:
        config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
        embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
        linear = sum(p.numel() for p in model.parameters() if id(p) not in embeddings and p.dim() >= 2)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(linear, heads * head_dim, config.num_hidden_layers)

    def flops(self, slots: int, pairs: float) -> float:
        """Forward FLOPs of ``slots`` token positions and ``pairs`` (query, key) attention pairs."""
        return 2.0 * self.linear_parameters * slots + 4.0 * self.attention_width * self.layers * pairs


def layout_costs(
    prompts: list[int], completions: list[int], distinct_prompts: int, capacity: int, shape: ModelShape, layouts=LAYOUTS
) -> dict[str, float]:
    """Forward FLOPs of one micro-batch in each of ``layouts``.

    ``prompts`` / ``completions``: the token counts of its sequences' prompts and completions;
    ``distinct_prompts``: how many different prompts they have; ``capacity``: the packed row
    length. Pads are run like tokens; attention pairs are ``W^2 / 2`` per causal row of width
    ``W``, ``W^2`` per row under a mask (packed rows holding several sequences; prompt groups'
    left-padded prompts and the completions that read them through the cache).
    """
    lengths = [p + c for p, c in zip(prompts, completions)]
    costs = {}
    if "padded" in layouts:
        width = max(lengths)
        costs["padded"] = shape.flops(len(lengths) * width, len(lengths) * width * width / 2)
    if "packed" in layouts:
        bins = best_fit_decreasing(lengths, max(capacity, max(lengths)))
        width = max(sum(lengths[i] for i in members) for members in bins)
        masked = any(len(members) > 1 for members in bins)
        costs["packed"] = shape.flops(len(bins) * width, len(bins) * width * width / (1 if masked else 2))
    if "prompt_groups" in layouts:
        prompt_width, longest = max(prompts), max(completions)
        slots = distinct_prompts * prompt_width + len(completions) * longest
        pairs = distinct_prompts * prompt_width**2 + len(completions) * longest * (prompt_width + longest)
        costs["prompt_groups"] = shape.flops(slots, pairs)
    return costs


def applicable_layouts(trainer) -> tuple[list[str], list[str]]:
    """``(layouts, notes)``: the layouts the trainer's config allows, and why another does not
    apply. A layout asked for by name that does not apply is a ConfigError."""
    from posttrain.models.prompt_groups import prompt_groups_problem

    cfg = trainer.config
    named = cfg.update_layout in LAYOUTS
    layouts = [cfg.update_layout] if named else (["packed"] if cfg.packing else []) + ["padded", "prompt_groups"]
    notes = []
    if "prompt_groups" in layouts:
        if cfg.num_generations < 2:
            problem = "one completion per prompt"
        elif trainer.prompt_groups_unsupported:
            problem = trainer.prompt_groups_unsupported
        elif trainer.accelerator.is_fsdp2:
            problem = "the model is sharded"
        else:
            problem = prompt_groups_problem(trainer.unwrapped_model(), cfg.gradient_checkpointing)
        if problem is not None:
            if named:
                raise ConfigError(f"update_layout='prompt_groups' cannot be used: {problem}. Fix: update_layout=auto")
            layouts.remove("prompt_groups")
            if cfg.num_generations > 1:  # with one completion per prompt there is nothing to share: no note
                notes.append(f"update layout prompt_groups does not apply ({problem})")
    return layouts, notes


class LayoutChooser:
    """The layout of each micro-batch of a trainer's update (see the module docstring). The
    layouts that apply are worked out at first use, with one line per one that does not."""

    def __init__(self, trainer):
        self.trainer = trainer
        self._layouts: list[str] | None = None
        self._shape: ModelShape | None = None

    def applicable(self) -> list[str]:
        if self._layouts is None:
            self._layouts, notes = applicable_layouts(self.trainer)
            for note in notes:
                self.trainer.reporter.print_verbatim(note)
        return self._layouts

    def layout_of(self, experience, rows: list[int], capacity: int) -> str:
        """The layout of ``rows`` of ``experience``: the one named, the one measured for the run
        (``measure``, kept with the experience), or the cheapest by count (``auto``)."""
        trainer, layouts = self.trainer, self.applicable()
        if trainer.config.update_layout == "measure" and trainer.buffer.layout is not None:
            return trainer.buffer.layout
        if len(layouts) == 1:
            return layouts[0]
        if self._shape is None:
            self._shape = ModelShape.of(trainer.unwrapped_model())
        prompts = [experience.samples.items[i]["prompt_ids"] for i in rows]
        completions = [len(experience.samples.completions[i].token_ids) for i in rows]
        distinct = len({tuple(ids) for ids in prompts})
        costs = layout_costs([len(ids) for ids in prompts], completions, distinct, capacity, self._shape, layouts)
        return min(costs, key=lambda name: (costs[name], LAYOUTS.index(name)))


def measure_layouts(trainer, module, experience, rows: list[int], layouts: list[str], rounds: int = 2) -> dict[str, float]:
    """Seconds of one forward and backward of the first micro-batch of ``rows`` in each layout
    (the shortest of ``rounds`` alternated timings; the slowest process's). Gradients, random
    number generators and metrics are left as they were."""
    acc = trainer.accelerator
    seconds = {layout: float("inf") for layout in layouts}
    batches = {layout: trainer.micro_batches(experience, rows, layout)[0] for layout in layouts}
    devices = [acc.device] if acc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), acc.no_sync(module):
        for _ in range(rounds):
            for layout in layouts:
                start = time.perf_counter()
                loss, _ = trainer.compute_loss(module, batches[layout])
                loss.backward()
                if acc.device.type == "cuda":
                    torch.cuda.synchronize(acc.device)
                seconds[layout] = min(seconds[layout], time.perf_counter() - start)
                module.zero_grad(set_to_none=True)
    if acc.num_processes > 1:
        slowest = acc.reduce(torch.tensor([seconds[layout] for layout in layouts], device=acc.device), reduction="max")
        seconds = dict(zip(layouts, slowest.tolist()))
    return seconds


def measured_layout(trainer, module, experience, rows: list[int], layouts: list[str]) -> str:
    """``measure``: the fastest of ``layouts`` on the first micro-batch, said in one line."""
    if len(layouts) == 1:
        return layouts[0]
    seconds = measure_layouts(trainer, module, experience, rows, layouts)
    chosen = min(layouts, key=seconds.get)
    timings = ", ".join(f"{layout} {seconds[layout]:.3g} s" for layout in layouts)
    trainer.reporter.print_verbatim(f"update layout: {chosen} (one forward and backward of a micro-batch measured: {timings})")
    return chosen
