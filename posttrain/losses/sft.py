"""Supervised fine-tuning loss: weighted negative log-likelihood per token."""

from __future__ import annotations

import torch


def token_nll(logps: torch.Tensor, loss_weights: torch.Tensor) -> torch.Tensor:
    """Per-token weighted negative log-likelihood.

    Args:
        logps: ``(B, T)`` log-probabilities of the target tokens.
        loss_weights: ``(B, T)`` bool or float; 0 for tokens that get no loss (prompt,
            padding), 1 for trained tokens, other values for per-turn weighting.

    Returns:
        ``(B, T)`` ``-logps * loss_weights``; reduce it with :mod:`posttrain.losses.reduce`.
    """
    return -logps * loss_weights.to(logps.dtype)
