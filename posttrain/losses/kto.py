"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as
Prospect Theoretic Optimization", ICML 2024, arXiv:2402.01306), section 4.1, eq. 7-8.

Unpaired completions labelled desirable or undesirable. With ``r = log pi(y|x) - log ref(y|x)``
and the reference point ``z0`` (an estimate of KL(pi || ref), detached):

    desirable:    lambda_D * (1 - sigmoid(beta * (r - z0)))
    undesirable:  lambda_U * (1 - sigmoid(beta * (z0 - r)))

The paper writes ``r_KTO = beta * r`` and ``z_ref = beta * KL``; factoring beta out gives the
form above. ``z0`` is estimated from mismatched (prompt, completion) pairs of the batch as
``max(0, mean(log pi(y'|x') - log ref(y'|x')))`` without back-propagation, as the paper does.
"""

from __future__ import annotations

import torch

# Eq. 8 of the paper: set lambda_D, lambda_U so that lambda_D n_D / (lambda_U n_U) is in
# [1, 4/3], "determined empirically" (and, the authors add, task-dependent).
RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    is_desirable: torch.Tensor,
    kl_reference: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO loss.

    Args:
        policy_logps: ``(B,)`` policy log-probs of the completions, summed over their tokens.
        ref_logps: ``(B,)`` reference log-probs of the same completions.
        is_desirable: ``(B,)`` bool label.
        kl_reference: scalar reference point z0 >= 0 from :func:`kl_reference_point`, already
            averaged over processes by the trainer; it is detached here regardless.
        beta: scale of the log-ratio, as in DPO.
        desirable_weight, undesirable_weight: lambda_D and lambda_U; see
            :func:`check_weight_ratio`.

    Returns:
        ``(losses (B,), rewards (B,))`` with ``rewards = beta * (policy - ref)`` detached.
    """
    log_ratio = policy_logps - ref_logps
    z0 = torch.as_tensor(kl_reference, dtype=log_ratio.dtype, device=log_ratio.device).detach()
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (log_ratio - z0)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - log_ratio)))
    losses = torch.where(is_desirable.bool(), desirable, undesirable)
    return losses, (beta * log_ratio).detach()


def kl_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """KTO's reference point: ``max(0, mean(policy_kl_logps - ref_kl_logps))``, detached.

    Args:
        policy_kl_logps: ``(M,)`` policy log-probs of completions paired with *other* prompts
            of the batch (the paper's mismatched pairs).
        ref_kl_logps: ``(M,)`` reference log-probs of the same pairs.
        clamp: clamp at 0. With several processes the clamp belongs after the cross-process
            mean (the paper clamps the batch mean), so a trainer calls this with
            ``clamp=False``, all-reduces the mean, then clamps.

    Returns:
        Scalar tensor.
    """
    estimate = (policy_kl_logps - ref_kl_logps).detach().float().mean()
    return estimate.clamp(min=0.0) if clamp else estimate


def check_weight_ratio(
    num_desirable: int, num_undesirable: int, desirable_weight: float, undesirable_weight: float
) -> str | None:
    """A warning when ``lambda_D n_D / (lambda_U n_U)`` is outside [1, 4/3], else None.

    Source: Ethayarajh et al. 2024, eq. 8 and the paragraph after it (one weight at 1, the other
    chosen to land in the interval; e.g. 1:1 data -> lambda_U = 1, lambda_D in [1, 1.33]).
    The message gives the desirable_weight range that would satisfy it.
    """
    low, high = RECOMMENDED_RATIO
    if num_desirable <= 0 or num_undesirable <= 0:
        return (
            f"KTO data has {num_desirable} desirable and {num_undesirable} undesirable examples; "
            "KTO needs both kinds to learn which completions to prefer"
        )
    ratio = (desirable_weight * num_desirable) / (undesirable_weight * num_undesirable)
    if low - 1e-9 <= ratio <= high + 1e-9:
        return None
    base = undesirable_weight * num_undesirable / num_desirable
    return (
        f"KTO weight ratio desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = "
        f"{desirable_weight:g}*{num_desirable} / ({undesirable_weight:g}*{num_undesirable}) = {ratio:.3f} is outside "
        f"[1, 4/3] recommended by Ethayarajh et al. 2024 (eq. 8); with undesirable_weight={undesirable_weight:g}, "
        f"set desirable_weight in [{base * low:.4g}, {base * high:.4g}]"
    )
