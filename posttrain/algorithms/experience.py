"""Experience of the online algorithms (GRPO, PPO): sampled completions and what an update needs
of them, laid out for training without padding waste.

A :class:`Rollout` is one sampled completion of one prompt, with per-token values (old and
reference log-probs, values, advantages ...) and per-sequence values (a GRPO advantage, a
score). :func:`collate_rollouts` turns a micro-batch of them into

- the **model input**: prompt + completion of every rollout, packed into rows of ``capacity``
  tokens (best-fit decreasing, position ids restarting per sequence, as SFT packing does), or one
  rollout per right-padded row when ``capacity`` is 0;
- the **completion view**: ``completion_index`` ``(S, L)`` holds, for completion token ``j`` of
  rollout ``s``, its flat position in the ``(R, T)`` input, so that per-token log-probs computed
  on the packed rows come back as a right-padded ``(S, L)`` tensor by one gather
  (:func:`completion_view`). Every pure loss in :mod:`posttrain.losses` works on that view,
  one sequence per row, whatever the packing.

``S`` rollouts, ``L`` = longest completion of the micro-batch, ``R`` x ``T`` packed rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from posttrain.data.collate import collate_packed
from posttrain.data.packing import best_fit_decreasing, make_packed_row


@dataclass
class Rollout:
    """One sampled completion.

    ``completion_mask`` has one entry per completion token: 1 where the token is trained on, 0
    where it is not (e.g. a truncated completion with ``mask_truncated_completions``).
    ``token_values`` map a name to one float per completion token; ``sequence_values`` map a
    name to one float for the whole completion.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[float]
    token_values: dict[str, list[float]] = field(default_factory=dict)
    sequence_values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.completion_ids:
            raise ValueError("a rollout needs at least one completion token")
        if len(self.completion_mask) != len(self.completion_ids):
            raise ValueError(f"completion_mask has {len(self.completion_mask)} entries for {len(self.completion_ids)} tokens")

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def collate_rollouts(rollouts: Sequence[Rollout], pad_token_id: int, capacity: int = 0) -> dict:
    """A micro-batch of rollouts as tensors (see the module docstring).

    Returns a dict with ``input_ids`` and ``position_ids`` ``(R, T)``, ``completion_index``
    (long) and ``completion_mask`` (float) ``(S, L)``, ``completion_positions`` ``(n,)`` long
    (the flat indices of every completion token, ascending: the LM head scores those only),
    one ``(S, L)`` float tensor per token value and one ``(S,)`` float tensor per sequence
    value (names as in the rollouts, which must all carry the same names), ``num_sequences`` =
    S and ``num_tokens`` (real tokens).
    """
    if not rollouts:
        raise ValueError("cannot collate an empty list of rollouts")
    lengths = [len(r) for r in rollouts]
    bins = best_fit_decreasing(lengths, max(capacity, max(lengths))) if capacity else [[i] for i in range(len(rollouts))]
    examples = [
        {"input_ids": r.prompt_ids + r.completion_ids, "loss_weights": [0.0] * len(r), "turn_index": [-1] * len(r), "row": i}
        for i, r in enumerate(rollouts)
    ]
    packed = collate_packed([make_packed_row([examples[i] for i in members]) for members in bins], pad_token_id)
    width = packed["input_ids"].shape[1]
    longest = max(len(r.completion_ids) for r in rollouts)
    index = torch.zeros(len(rollouts), longest, dtype=torch.long)
    for row, members in enumerate(bins):
        offset = row * width
        for i in members:
            rollout = rollouts[i]
            start = offset + len(rollout.prompt_ids)
            index[i, : len(rollout.completion_ids)] = torch.arange(start, start + len(rollout.completion_ids))
            offset += len(rollout)
    batch = {
        "input_ids": packed["input_ids"],
        "position_ids": packed["position_ids"],
        "completion_index": index,
        "completion_mask": right_padded([r.completion_mask for r in rollouts], longest),
        # prompts are never scored, so the head skips them (each completion token has a prompt
        # token or an earlier completion token before it in its row)
        "completion_positions": torch.cat([index[i, : len(r.completion_ids)] for i, r in enumerate(rollouts)]).sort().values,
        "num_sequences": len(rollouts),
        "num_tokens": packed["num_tokens"],
    }
    for name in rollouts[0].token_values:
        batch[name] = right_padded([r.token_values[name] for r in rollouts], longest)
    for name in rollouts[0].sequence_values:
        batch[name] = torch.tensor([r.sequence_values[name] for r in rollouts], dtype=torch.float32)
    return batch


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
