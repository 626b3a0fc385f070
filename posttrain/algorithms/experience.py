"""What the online algorithms train on, in two typed stages (docs/design.md, "Online RL"):
:class:`Samples`, a generation batch as the rollout (or PPO's ``step`` caller) made it, and
:class:`Experience`, the same as training data, with what the algorithm computed from it.

:func:`micro_batch` lays rows of an experience out for one forward pass: prompt + completion of
each sequence packed into rows of ``capacity`` tokens (best-fit decreasing, position ids
restarting per sequence) or one per right-padded row, and ``completion_index`` ``(S, L)``, the
flat input position of each completion token, so that per-token values of the packed rows come
back as a right-padded ``(S, L)`` view by one gather (:func:`completion_view`), the layout every
loss in :mod:`posttrain.losses` takes.

``N`` sequences per generation batch (a prompt's ``G`` samples contiguous), ``S`` per
micro-batch, ``L`` the longest completion, ``R`` x ``T`` packed rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from posttrain.data.collate import collate_packed
from posttrain.data.packing import best_fit_decreasing, make_packed_row
from posttrain.models.prompt_groups import PromptGroups


@dataclass
class Samples:
    """One generation batch as sampled and scored.

    Attributes:
        items: ``N`` prompt items (``prompt`` as given, ``prompt_ids``, ``columns``), a group's
            ``G`` samples sharing one.
        completions: ``N`` :class:`~posttrain.rollout.Completion` (token ids after the prompt,
            ``generated`` marking the model's own when others were inserted; text; why it ended).
        rewards: ``N`` lists of one reward per completion token: the score on the last token,
            unless the caller gave per-token rewards.
        details: the reward functions' :class:`~posttrain.rollout.RewardResult`, or None.
        group_size: ``G``, samples per prompt.
        stats: numbers the rollout reports as metrics (``time/rewards``, ``dynamic_sampling/*``).
    """

    items: list[dict]
    completions: list
    rewards: list[list[float]]
    details: object = None
    group_size: int = 1
    stats: dict[str, float] = field(default_factory=dict)

    def scores(self) -> torch.Tensor:
        """``(N,)`` float32: each sequence's summed reward."""
        return torch.tensor([sum(r) for r in self.rewards], dtype=torch.float32) if self.rewards else torch.zeros(0)

    def groups(self) -> list[range]:
        """The rows of each prompt's group."""
        size = self.group_size
        return [range(start, start + size) for start in range(0, len(self.completions), size)]

    @classmethod
    def join(cls, parts: Sequence[tuple[Samples, range]]) -> Samples:
        """The samples of the groups ``(samples, rows)`` in the given order (from several
        generation rounds of one batch; the caller states the stats)."""
        rows = [(samples, i) for samples, group in parts for i in group]
        details = None
        if rows and rows[0][0].details is not None:  # the result's own batch metrics no longer apply
            first = rows[0][0].details
            total = torch.stack([s.details.total[i] for s, i in rows])
            details = replace(first, total=total, per_function=torch.stack([s.details.per_function[i] for s, i in rows]), metrics={})
        return cls([s.items[i] for s, i in rows], [s.completions[i] for s, i in rows], [s.rewards[i] for s, i in rows], details, parts[0][0].group_size)


@dataclass
class Experience:
    """A generation batch as training data: ``samples``, and ``(N, L)`` float32 tensors,
    right-padded with zeros, ``L`` the longest completion.

    Attributes:
        completion_mask: 1 on the tokens that get loss, KL and advantage: sampled by the model,
            in completions not masked (``mask_truncated_completions``); 0 on tokens inserted
            between its turns (tool results) and on padding.
        rewards: the per-token rewards of ``samples``.
        advantages: per token (one per sequence is repeated over its tokens).
        old_logps: the sampling policy's log-probs when the policy moves before the experience is
            used up; None: the current ones, detached (ratio 1).
        ref_logps, old_values, returns: the reference's log-probs (a KL term); the critic's
            values at sampling time and their targets (PPO); None when unused.
    """

    samples: Samples
    completion_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @classmethod
    def from_samples(cls, samples: Samples, mask_truncated: bool = False) -> Experience:
        """The completion mask and rewards of ``samples``; ``mask_truncated`` gives no loss to
        completions that ran out of length (``finish_reason == "length"``)."""
        masks = []
        for completion in samples.completions:
            generated = completion.generated if completion.generated is not None else [True] * len(completion.token_ids)
            keep = 0.0 if mask_truncated and completion.truncated else 1.0
            masks.append([keep if g else 0.0 for g in generated])
        width = max(len(c.token_ids) for c in samples.completions)
        return cls(samples, right_padded(masks, width), right_padded(samples.rewards, width))

    def __len__(self) -> int:
        return len(self.samples.completions)


# Per-token fields a micro-batch carries when the experience has them.
TOKEN_FIELDS = ("advantages", "old_logps", "ref_logps", "old_values", "returns")


@dataclass
class MicroBatch:
    """``S`` rows of an :class:`Experience` laid out for one forward pass: ``input_ids`` and
    ``position_ids`` ``(R, T)``; ``completion_index`` ``(S, L)``; ``completion_positions`` ``(n,)``,
    the ascending flat positions of every completion token, the only ones the LM head scores
    (None: all); ``rows`` ``(S,)``, which experience rows; ``num_tokens`` (real input tokens);
    and ``(S, L)`` slices of the experience's per-token tensors. ``groups``, when set, lays the
    same sequences out with each prompt once (:class:`~posttrain.models.prompt_groups.PromptGroups`),
    for a forward pass that gives ``(S, L)`` values directly."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    completion_index: torch.Tensor
    completion_positions: torch.Tensor | None
    completion_mask: torch.Tensor
    rows: torch.Tensor
    num_tokens: int
    advantages: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    groups: PromptGroups | None = None


def micro_batch(experience: Experience, rows: Sequence[int], pad_token_id: int, capacity: int = 0, group_prompts: bool = False) -> MicroBatch:
    """Rows ``rows`` of ``experience`` as one :class:`MicroBatch` (see the module docstring);
    ``capacity`` 0 puts each sequence in its own right-padded row; ``group_prompts`` also lays
    them out by prompt (``MicroBatch.groups``)."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    prompts = [experience.samples.items[i]["prompt_ids"] for i in rows]
    completions = [list(experience.samples.completions[i].token_ids) for i in rows]
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    bins = best_fit_decreasing(lengths, max(capacity, max(lengths))) if capacity else [[i] for i in range(len(rows))]
    examples = [
        {"input_ids": p + c, "loss_weights": [0.0] * n, "turn_index": [-1] * n, "row": i}
        for i, (p, c, n) in enumerate(zip(prompts, completions, lengths))
    ]
    packed = collate_packed([make_packed_row([examples[i] for i in members]) for members in bins], pad_token_id)
    width = packed["input_ids"].shape[1]
    longest = max(len(c) for c in completions)
    index = torch.zeros(len(rows), longest, dtype=torch.long)
    for row, members in enumerate(bins):
        offset = row * width
        for i in members:
            start = offset + len(prompts[i])
            index[i, : len(completions[i])] = torch.arange(start, start + len(completions[i]))
            offset += lengths[i]
    selected = torch.tensor(list(rows), dtype=torch.long)
    values = {name: getattr(experience, name) for name in TOKEN_FIELDS}
    return MicroBatch(
        input_ids=packed["input_ids"],
        position_ids=packed["position_ids"],
        completion_index=index,
        # each completion token has a prompt token or an earlier completion token before it in its row
        completion_positions=torch.cat([index[i, : len(c)] for i, c in enumerate(completions)]).sort().values,
        completion_mask=experience.completion_mask[selected, :longest],
        rows=selected,
        num_tokens=packed["num_tokens"],
        **{name: None if value is None else value[selected, :longest] for name, value in values.items()},
        groups=PromptGroups.from_lists(prompts, completions, pad_token_id) if group_prompts else None,
    )


def completion_view(per_token: torch.Tensor, completion_index: torch.Tensor) -> torch.Tensor:
    """Gather ``(R, T)`` per-token values (aligned with the input tokens, as
    :class:`~posttrain.models.causal_lm.TokenLogProbs` returns them) into the ``(S, L)``
    completion view. Padded positions hold the value of flat position 0; multiply by the
    completion mask (or ignore them) downstream."""
    return per_token.reshape(-1)[completion_index.to(per_token.device)]


def right_padded(values: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    """``(len(values), width)`` float32, row ``i`` holding ``values[i]`` then zeros."""
    out = torch.zeros(len(values), width, dtype=torch.float32)
    for row, row_values in enumerate(values):
        out[row, : len(row_values)] = torch.tensor(row_values, dtype=torch.float32)
    return out


def split_micro_batches(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


class ExperienceBuffer:
    """The experience in use and the optimizer steps it still serves, each a list of its rows
    (the same rows ``num_iterations`` times for GRPO, a shuffled mini-batch per step for PPO),
    and the layout of the update's micro-batches once chosen (:mod:`~posttrain.algorithms.update_layout`).
    In every checkpoint, so a run resumed between two of those steps continues on the same samples
    in the same layout."""

    def __init__(self):
        self.experience: Experience | None = None
        self.steps: list[list[int]] = []
        self.layout: str | None = None

    def fill(self, experience: Experience, steps: list[list[int]]) -> None:
        """Serve ``experience``'s rows ``steps[k]`` to the k-th optimizer step from now."""
        self.experience, self.steps = experience, list(steps)

    def take(self) -> list[int] | None:
        return self.steps.pop(0) if self.steps else None

    def clear(self) -> int:
        """Drop the steps not yet served (e.g. PPO's early stop); returns how many."""
        dropped, self.steps = len(self.steps), []
        return dropped

    def peek(self) -> list[int] | None:
        """The rows of the next step, left in place."""
        return self.steps[0] if self.steps else None

    def state_dict(self) -> dict:
        return {"experience": self.experience, "steps": self.steps, "layout": self.layout}

    def load_state_dict(self, state: dict) -> None:
        self.experience, self.steps = state["experience"], list(state["steps"])
        self.layout = state.get("layout")  # checkpoints written before layouts were chosen: choose again

