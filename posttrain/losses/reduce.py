"""Reduction of per-unit losses to what the training loop divides.

The loop (``posttrain.train.loop``) does not average inside a micro-batch: it takes each
micro-batch's *summed* loss and divides by the number of loss units in the whole accumulated
batch, over all micro-batches and processes (docs/design.md, "Loss normalisation"). Every helper here
therefore returns a :class:`LossSum` — a numerator and the units it should be divided by — and
the global loss is ``sum(totals) / sum(counts)``. For one micro-batch on one process
``LossSum.mean()`` is the ordinary mean.

Aggregation modes for token-level (RL) losses, picked by name from :data:`AGGREGATIONS`:

- ``token_mean``: every loss token weighs the same; ``sum(l * m) / sum(m)``.
- ``sequence_mean``: each sequence's token mean, averaged over sequences (GRPO as published),
  so a short completion's tokens weigh more than a long one's. Sequences without loss tokens
  count neither in the total nor in the units.
- ``sequence_sum_over_constant``: ``sum(l * m) / (num_sequences * max_len)`` with a constant
  ``max_len`` (the generation length limit), from Dr. GRPO (Liu et al. 2025, "Understanding
  R1-Zero-Like Training"), which removes the length bias of both means above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


class LossSum(NamedTuple):
    """A summed loss and the number of units it covers (both scalar tensors)."""

    total: torch.Tensor
    count: torch.Tensor

    def mean(self) -> torch.Tensor:
        """``total / count`` for this batch alone (0 when the count is 0, as the total is then 0)."""
        return self.total / self.count.clamp(min=1e-12)


def sum_and_count(losses: torch.Tensor, weights: torch.Tensor | None = None) -> LossSum:
    """Sum of per-unit losses and the unit count.

    Args:
        losses: any shape, e.g. per-token ``(B, T)`` or per-pair ``(B,)``; already weighted
            for token losses such as :func:`~posttrain.losses.sft.token_nll`.
        weights: same shape, bool or float; None counts every element. The count is
            ``weights.sum()``, so a token with weight 0.5 counts as half a unit.

    Returns:
        :class:`LossSum` of ``sum(losses * weights)`` and ``sum(weights)``.
    """
    if weights is None:
        return LossSum(losses.sum(), torch.tensor(float(losses.numel()), device=losses.device))
    weights = weights.to(losses.dtype)
    return LossSum((losses * weights).sum(), weights.sum())


def _token_mean(losses: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> LossSum:
    return sum_and_count(losses, mask)


def _sequence_mean(losses: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> LossSum:
    mask = mask.to(losses.dtype)
    tokens = mask.sum(dim=-1)
    present = tokens > 0
    per_sequence = (losses * mask).sum(dim=-1) / torch.where(present, tokens, torch.ones_like(tokens))
    return LossSum(per_sequence.sum(), present.to(losses.dtype).sum())


def _sequence_sum_over_constant(losses: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> LossSum:
    if max_len is None or max_len < 1:
        raise ValueError("aggregation 'sequence_sum_over_constant' needs max_len >= 1 (the generation length limit)")
    mask = mask.to(losses.dtype)
    num_sequences = torch.tensor(float(losses.shape[0]), device=losses.device, dtype=losses.dtype)
    return LossSum((losses * mask).sum() / max_len, num_sequences)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int | None], LossSum]] = {
    "token_mean": _token_mean,
    "sequence_mean": _sequence_mean,
    "sequence_sum_over_constant": _sequence_sum_over_constant,
}


def aggregate(name: str, losses: torch.Tensor, mask: torch.Tensor, *, max_len: int | None = None) -> LossSum:
    """Reduce per-token losses ``(B, T)`` with loss mask ``(B, T)`` by the mode ``name``.

    ``max_len`` is required by ``sequence_sum_over_constant`` and ignored otherwise. Raises
    ``ValueError`` naming the valid modes when ``name`` is unknown.
    """
    try:
        mode = AGGREGATIONS[name]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {name!r}; valid: {', '.join(sorted(AGGREGATIONS))}") from None
    return mode(losses, mask, max_len)
