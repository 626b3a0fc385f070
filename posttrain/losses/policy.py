"""Clipped policy-gradient and value losses (PPO, GRPO, DAPO, GSPO), per token.

Every function takes ``(B, T)`` per-token tensors with a completion mask and returns per-token
losses that are 0 outside the mask; reducing them to a scalar is
:func:`posttrain.losses.reduce.aggregate` (token mean, sequence mean, or Dr. GRPO's constant).

Policy loss (Schulman et al. 2017, PPO), per token with importance ratio ``r`` and advantage
``A``::

    loss = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)

- ``clip_high > clip_low`` is DAPO's clip-higher (Yu et al. 2025, e.g. 0.2 / 0.28): low-
  probability tokens with positive advantage may grow further before the clip stops them.
- ``clip_ratio_c`` is dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games
  with Deep RL"): for ``A < 0`` the loss is also capped at ``-clip_ratio_c * A``, so a token
  whose ratio exploded cannot dominate the batch.
- ``level="sequence"`` is GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"); see
  :func:`log_importance_ratio`.

Value loss: PPO's clipped squared error (as in OpenAI's baselines and TRL),
``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from posttrain.ops import masked_mean


def _check_pair(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor) -> None:
    shapes = {tuple(per_token_logps.shape), tuple(old_per_token_logps.shape), tuple(mask.shape)}
    if len(shapes) != 1 or per_token_logps.ndim != 2:
        raise ValueError(
            "per_token_logps, old_per_token_logps and mask must be (B, T) of one shape, got "
            f"{tuple(per_token_logps.shape)}, {tuple(old_per_token_logps.shape)}, {tuple(mask.shape)}"
        )


def _token_log_ratio(delta: torch.Tensor, per_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return delta


def _sequence_log_ratio(delta: torch.Tensor, per_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # GSPO-token form: the value is the sequence's mean log-ratio, the gradient at token t is
    # that of log pi(y_t) alone (the mean is detached, log pi - sg[log pi] adds the gradient).
    sequence = masked_mean(delta.detach(), mask, dim=-1).unsqueeze(-1)
    return sequence + per_token_logps - per_token_logps.detach()


LOG_RATIO_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def log_importance_ratio(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    level: str = "token",
) -> torch.Tensor:
    """Log of the importance ratio ``pi / pi_old`` of every completion token.

    Levels (picked from :data:`LOG_RATIO_LEVELS`):

    - ``"token"``: ``log pi(y_t) - log pi_old(y_t)`` (PPO, GRPO).
    - ``"sequence"``: GSPO's ``log s_i = mean_t (log pi(y_t) - log pi_old(y_t))`` over the
      sequence's masked tokens, the same value on each of its tokens. The gradient is that of
      GSPO-token (the paper's eq. for per-token advantages): ``sg[log s_i] + log pi(y_t) -
      sg[log pi(y_t)]``, i.e. ``d/d theta = grad log pi(y_t)`` at each token. With one
      advantage per sequence and any aggregation that weighs a sequence's tokens equally (all
      of :data:`~posttrain.losses.reduce.AGGREGATIONS`), the summed gradient equals that of
      GSPO's sequence objective, ``s_i * A_i * mean_t grad log pi(y_t)`` per sequence under
      ``sequence_mean``; with per-token advantages it is GSPO-token.

    Args:
        per_token_logps: ``(B, T)`` current policy log-probs (with gradient).
        old_per_token_logps: ``(B, T)`` log-probs at rollout time (treated as constants).
        mask: ``(B, T)`` bool or float weights; the sequence mean is weighted by it.
        level: ``"token"`` or ``"sequence"``.

    Returns:
        ``(B, T)`` log-ratios, 0 outside the mask (so ``exp`` gives ratio 1 there).
    """
    try:
        level_fn = LOG_RATIO_LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown importance-ratio level {level!r}; valid: {', '.join(LOG_RATIO_LEVELS)}") from None
    _check_pair(per_token_logps, old_per_token_logps, mask)
    inside = mask > 0
    # where (not multiply) so garbage log-probs at padding cannot turn into inf * 0 = NaN.
    delta = torch.where(inside, per_token_logps - old_per_token_logps.detach(), 0.0)
    log_ratio = level_fn(delta, per_token_logps, mask)
    return torch.where(inside, log_ratio, 0.0)


class PolicyLossStats(NamedTuple):
    """Detached per-token diagnostics of :func:`clipped_policy_loss`, all ``(B, T)``.

    Aggregate them with the completion mask (e.g. ``masked_mean(stats.clipped_high, mask)``).
    Outside the mask the ratio is 1 and every flag is False.

    Attributes:
        ratio: importance ratio ``exp(log_importance_ratio)`` (the sequence ratio at
            ``level="sequence"``).
        clipped_low: ``A < 0`` and ``ratio < 1 - clip_low`` (the clip removed the gradient).
        clipped_high: ``A > 0`` and ``ratio > 1 + clip_high`` (the clip removed the gradient).
        clipped_dual: ``A < 0`` and ``ratio > clip_ratio_c`` (dual clip active); all False
            when ``clip_ratio_c`` is None.
    """

    ratio: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    clipped_dual: torch.Tensor


def _check_clip(clip_low: float, clip_high: float, clip_ratio_c: float | None) -> None:
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1) so that 1 - clip_low > 0, got {clip_low}")
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1 (typically 3) or None, got {clip_ratio_c}")


def _per_token_advantages(advantages: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if tuple(advantages.shape) == (shape[0],):
        return advantages.detach().unsqueeze(-1)
    if tuple(advantages.shape) == tuple(shape):
        return advantages.detach()
    raise ValueError(f"advantages must be (B,) or (B, T) = {tuple(shape)}, got {tuple(advantages.shape)}")


def clipped_policy_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    clip_ratio_c: float | None = None,
    level: str = "token",
) -> tuple[torch.Tensor, PolicyLossStats]:
    """PPO's clipped surrogate per token, with clip-higher, dual clip and GSPO options.

    With one optimizer pass per rollout batch pass ``old_per_token_logps =
    per_token_logps.detach()``: the ratio is then 1 and the gradient is that of
    ``-A * log pi`` (tested).

    Args:
        per_token_logps: ``(B, T)`` current policy log-probs (with gradient).
        old_per_token_logps: ``(B, T)`` log-probs at rollout time.
        advantages: ``(B,)`` one per sequence, or ``(B, T)`` per token; detached here.
        mask: ``(B, T)`` bool or float weights of the completion tokens.
        clip_low: ratio floor is ``1 - clip_low``.
        clip_high: ratio ceiling is ``1 + clip_high``; None means ``clip_low`` (DAPO: 0.28).
        clip_ratio_c: dual-clip bound for negative advantages (> 1), None for none.
        level: ``"token"`` or ``"sequence"`` (GSPO), see :func:`log_importance_ratio`.

    Returns:
        ``(per_token_loss (B, T), stats)``: the loss is 0 outside the mask (not multiplied by
        float weights: :func:`~posttrain.losses.reduce.aggregate` applies them);
        ``stats`` is a detached :class:`PolicyLossStats`.
    """
    clip_high = clip_low if clip_high is None else clip_high
    _check_clip(clip_low, clip_high, clip_ratio_c)
    log_ratio = log_importance_ratio(per_token_logps, old_per_token_logps, mask, level)
    adv = _per_token_advantages(advantages, log_ratio.shape).to(log_ratio.dtype)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = -torch.minimum(ratio * adv, clipped_ratio * adv)
    negative = adv < 0
    inside = mask > 0
    with torch.no_grad():
        ratio_value = ratio.detach()
        dual = torch.zeros_like(inside)
        if clip_ratio_c is not None:
            dual = negative & (ratio_value > clip_ratio_c) & inside
        stats = PolicyLossStats(
            ratio=ratio_value,
            clipped_low=negative & (ratio_value < 1.0 - clip_low) & inside,
            clipped_high=(adv > 0) & (ratio_value > 1.0 + clip_high) & inside,
            clipped_dual=dual,
        )
    if clip_ratio_c is not None:
        loss = torch.where(negative, torch.minimum(loss, -clip_ratio_c * adv), loss)
    return torch.where(inside, loss, 0.0), stats


def reinforce_policy_loss(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, PolicyLossStats]:
    """REINFORCE (Williams 1992) per token: ``loss = -A * log pi(y_t)``, for completions sampled
    from the current policy (on-policy: nothing clips, the gradient is ``-A * grad log pi``).

    Args:
        per_token_logps: ``(B, T)`` current policy log-probs (with gradient).
        old_per_token_logps: ``(B, T)`` log-probs at sampling time; only the ``ratio`` statistic
            reads them (1 on-policy).
        advantages: ``(B,)`` one per sequence, or ``(B, T)`` per token; detached here.
        mask: ``(B, T)`` bool or float weights of the completion tokens.

    Returns:
        ``(per_token_loss (B, T), stats)``: the loss is 0 outside the mask; no clip flag is set.
    """
    _check_pair(per_token_logps, old_per_token_logps, mask)
    adv = _per_token_advantages(advantages, per_token_logps.shape).to(per_token_logps.dtype)
    inside = mask > 0
    with torch.no_grad():
        ratio = torch.exp(torch.where(inside, per_token_logps - old_per_token_logps, 0.0))
        never = torch.zeros_like(inside)
    return torch.where(inside, -adv * per_token_logps, 0.0), PolicyLossStats(ratio, never, never, never)


# Policy losses by name: ``fn(per_token_logps, old_per_token_logps, advantages, mask, **options)
# -> (per_token_loss (B, T), PolicyLossStats)``; an online trainer picks one (docs/design.md).
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, PolicyLossStats]]] = {
    "clipped": clipped_policy_loss,
    "reinforce": reinforce_policy_loss,
}


def policy_loss(name: str, per_token_logps, old_per_token_logps, advantages, mask, **options) -> tuple[torch.Tensor, PolicyLossStats]:
    """The policy loss ``name`` of :data:`POLICY_LOSSES` with its ``options``."""
    try:
        loss = POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES)}") from None
    return loss(per_token_logps, old_per_token_logps, advantages, mask, **options)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's value loss ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``.

    Args:
        values: ``(B, T)`` current value predictions (with gradient).
        old_values: ``(B, T)`` predictions at rollout time (detached here).
        returns: ``(B, T)`` targets, e.g. from :func:`~posttrain.losses.advantages.gae`
            (detached here).
        mask: ``(B, T)`` bool or float weights.
        clip_range: ``c`` > 0; None gives the plain ``0.5 * (V - R)^2``.

    Returns:
        ``(per_token_loss (B, T), clipped (B, T) bool)``: the loss is 0 outside the mask;
        ``clipped`` marks masked tokens where the clipped term was the larger (its gradient
        is 0 there when the clip is active), for the ``val/clipfrac_avg`` metric.
    """
    shapes = {tuple(values.shape), tuple(old_values.shape), tuple(returns.shape), tuple(mask.shape)}
    if len(shapes) != 1 or values.ndim != 2:
        raise ValueError(f"values, old_values, returns and mask must be (B, T) of one shape, got {sorted(shapes)}")
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range (cliprange_value) must be > 0 or None, got {clip_range}")
    inside = mask > 0
    returns, old_values = returns.detach(), old_values.detach()
    unclipped = (values - returns).square()
    if clip_range is None:
        loss, clipped = unclipped, torch.zeros_like(inside)
    else:
        moved = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped_error = (moved - returns).square()
        loss = torch.maximum(unclipped, clipped_error)
        clipped = (clipped_error > unclipped) & inside
    return torch.where(inside, 0.5 * loss, 0.0), clipped


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over the masked tokens: 1 for a perfect critic, 0 for one
    that predicts the mean return, negative for worse.

    Args:
        values, returns, mask: ``(B, T)``; mask bool or float weights.

    Returns:
        0-d float tensor, detached; NaN when the returns have zero variance (the ratio is
        undefined), as Stable-Baselines3 reports it.
    """
    values, returns = values.float(), returns.float()

    def variance(x: torch.Tensor) -> torch.Tensor:
        return masked_mean((x - masked_mean(x, mask)).square(), mask)

    total = variance(returns)
    residual = variance(returns - values)
    return torch.where(total > 0, 1.0 - residual / total, torch.full_like(total, float("nan")))
