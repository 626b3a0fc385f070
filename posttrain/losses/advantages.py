"""Advantages for online RL: group-relative (GRPO, Dr. GRPO, RLOO) and GAE (PPO).

Group-relative advantages need no value model: each prompt is sampled ``G`` times and every
completion is compared with its siblings. Rewards arrive flat, ``(N,)`` with ``N = P * G``,
the ``G`` completions of one prompt contiguous (rows ``[p*G, (p+1)*G)``).

- ``group_relative_advantages``: ``r - mean(group)``, divided by a scale picked by name from
  :data:`ADVANTAGE_SCALES`: the group's std (GRPO, Shao et al. 2024, "DeepSeekMath"), the std
  of all N rewards (``batch``: group mean, batch std, as in "Tricks or Traps? A Deep Dive into
  RL for LLM Reasoning", Liu et al. 2025), or nothing (``none``: Dr. GRPO, "Understanding
  R1-Zero-Like Training", Liu et al. 2025, which removes the difficulty bias of dividing by
  the group std).
- ``leave_one_out_advantages``: RLOO (Ahmadian et al. 2024, "Back to Basics"), ``r_i`` minus
  the mean of the other ``G - 1`` rewards, which equals ``G / (G - 1) * (r_i - mean)``.

A group whose rewards are all equal carries no signal: its advantages are exactly 0 (tested
with ``max == min``, not derived from a tiny std, because the float mean of equal numbers is
not always that number: in float32 the mean of three 0.9s is not 0.9, and dividing the
~6e-8 remainder by a ~7e-8 std would give O(1) noise).

GAE (Schulman et al. 2016) runs over ragged completions for PPO; :func:`whiten_advantages`
normalises the result over the completion tokens. Nothing here carries gradient: advantages
and returns are targets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from posttrain.ops import whiten


def _sample_std(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std, ``torch.std``'s default, as TRL's GRPO trainer uses (which also
    adds 1e-4 to it; here all-equal groups are handled exactly instead)."""
    return values.std() if dim is None else values.std(dim=dim, keepdim=True)


def _group_scale(rewards: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    return _sample_std(grouped, dim=1)


def _batch_scale(rewards: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    return _sample_std(rewards)


def _no_scale(rewards: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=rewards.dtype, device=rewards.device)


ADVANTAGE_SCALES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "group": _group_scale,
    "batch": _batch_scale,
    "none": _no_scale,
}


def _grouped(rewards: torch.Tensor, group_size: int, minimum: int, what: str) -> torch.Tensor:
    """Check the rewards and view them as ``(P, G)``."""
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,) with N = prompts * group_size, got shape {tuple(rewards.shape)}")
    if group_size < minimum:
        raise ValueError(f"{what} needs group_size (completions per prompt) >= {minimum}, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"got {rewards.numel()} rewards, not a multiple of group_size {group_size}: "
            "every prompt needs all of its completions, contiguous"
        )
    bad = (~torch.isfinite(rewards)).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"rewards must be finite; rows {bad[:8].tolist()} are {rewards[bad[:8]].tolist()}")
    return rewards.reshape(-1, group_size)


def _zero_equal_groups(advantages: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    """``(P, G)`` advantages with every all-equal group set to exactly 0, flattened to ``(N,)``."""
    equal = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    return torch.where(equal, torch.zeros_like(advantages), advantages).reshape(-1)


@torch.no_grad()
def group_relative_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by ``scale``.

    Args:
        rewards: ``(N,)`` float, ``N = P * group_size``, each prompt's completions contiguous.
        group_size: completions per prompt ``G``, at least 2 (a group of one has nothing to be
            compared with).
        scale: ``"group"`` (the group's std), ``"batch"`` (the std of all N rewards) or
            ``"none"``; see :data:`ADVANTAGE_SCALES`. Stds are sample (Bessel-corrected) stds.

    Returns:
        ``(N,)`` detached, dtype of ``rewards``. Groups with all-equal rewards give exactly 0.
        With ``scale="group"`` every non-equal group has magnitudes bounded by
        ``(G - 1) / sqrt(G)``, so no epsilon is needed; ``"batch"`` divides by a std that is
        positive whenever some group is not all-equal.
    """
    try:
        scale_of = ADVANTAGE_SCALES[scale]
    except KeyError:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(ADVANTAGE_SCALES)}") from None
    grouped = _grouped(rewards, group_size, 2, "group_relative_advantages")
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    divisor = scale_of(rewards, grouped)
    # Where the divisor is 0 the group is all-equal (zeroed below); 1 avoids 0/0 = NaN there.
    safe = torch.where(divisor > 0, divisor, torch.ones_like(divisor))
    return _zero_equal_groups(centred / safe, grouped)


@torch.no_grad()
def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages: ``r_i - (sum(group) - r_i) / (G - 1)``.

    Args:
        rewards: ``(N,)`` float, ``N = P * group_size``, each prompt's completions contiguous.
        group_size: completions per prompt ``G``, at least 2 (the baseline of a completion is
            the mean of the *other* ones).

    Returns:
        ``(N,)`` detached, dtype of ``rewards``; exactly 0 for all-equal groups.
    """
    grouped = _grouped(rewards, group_size, 2, "leave_one_out_advantages")
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return _zero_equal_groups(grouped - others_mean, grouped)


# Advantages within groups by name: ``fn(rewards (N,), group_size, **options) -> (N,)``.
GROUP_ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": group_relative_advantages,
    "rloo": leave_one_out_advantages,
}


def group_advantages(name: str, rewards: torch.Tensor, group_size: int, **options) -> torch.Tensor:
    """The estimator ``name`` of :data:`GROUP_ADVANTAGES`, given the ``options`` it takes (``scale``
    for ``grpo``); options another estimator takes are ignored, so one config serves all."""
    try:
        estimator = GROUP_ADVANTAGES[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {', '.join(GROUP_ADVANTAGES)}") from None
    taken = inspect.signature(estimator).parameters
    return estimator(rewards, group_size, **{key: value for key, value in options.items() if key in taken})


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected (B, T) tensors of one shape, got {shapes}")


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over ragged completions.

    ``delta_t = r_t + gamma * V_next - V_t`` and ``A_t = delta_t + gamma * lam * A_next``,
    where "next" is the next position of the same row *inside the mask*: positions outside
    the mask are skipped, so their rewards and values never enter the recursion. After a
    row's last masked token the episode has ended: ``V_next = A_next = 0``. With right-padded
    completions this is the usual recursion over each completion's real tokens.

    Args:
        rewards: ``(B, T)`` per-token rewards (PPO for LMs: ``-kl_coef * kl`` on every token
            plus the score on the last one).
        values: ``(B, T)`` value estimates ``V(s_t)`` of the tokens (the old values, detached).
        mask: ``(B, T)`` bool or 0/1 float, 1 on completion tokens.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1]; 1 gives Monte Carlo returns minus values, 0 one-step TD.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` detached in at least float32, 0 outside
        the mask; ``returns = advantages + values`` inside it (the value targets).
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    for name, number in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {number}")
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values, inside = rewards.to(dtype), values.to(dtype), mask > 0
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(next_value)
    # One step per position: T is the completion length (hundreds), each step is B-wide.
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        current = delta + gamma * lam * next_advantage
        here = inside[:, t]
        advantages[:, t] = torch.where(here, current, torch.zeros_like(current))
        next_value = torch.where(here, values[:, t], next_value)
        next_advantage = torch.where(here, current, next_advantage)
    returns = torch.where(inside, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


@torch.no_grad()
def whiten_advantages(
    advantages: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8, all_reduce=None
) -> torch.Tensor:
    """Advantages normalised to mean 0 and unit (sample) variance over the masked tokens.

    :func:`posttrain.ops.whiten` without gradient. Statistics are those of this tensor alone,
    unless ``all_reduce`` (a ``tensor -> tensor`` sum over processes) is given: then every
    process whitens with the mean and variance of all processes' tokens.

    Args:
        advantages: ``(B, T)``, e.g. from :func:`gae`.
        mask: ``(B, T)`` bool or 0/1 float; at least two tokens set.
        shift_mean: False keeps the mean and only rescales.
        eps: added to the variance.
        all_reduce: optional ``tensor -> tensor`` sum of a 0-d tensor over processes.

    Returns:
        ``(B, T)`` detached, 0 outside the mask.
    """
    return whiten(advantages, mask, shift_mean=shift_mean, eps=eps, all_reduce=all_reduce)
