"""The DPO family of pairwise preference losses, picked by name from :data:`PREFERENCE_LOSSES`.

Notation: for a pair (chosen ``w``, rejected ``l``) with sequence log-probs summed over the
completion tokens,

    h = (log pi(w) - log ref(w)) - (log pi(l) - log ref(l))

is the difference of the implicit rewards divided by beta. Every loss returns per-pair losses
``(B,)`` and the detached implicit rewards of the chosen and rejected completions ``(B,)``:
``beta * (log pi - log ref)`` for the reference-based losses and ``beta * log pi / length``
for SimPO.

Losses:

- ``sigmoid``: DPO (Rafailov et al. 2023), ``-log sigmoid(beta h)``. With
  ``label_smoothing = eps > 0`` it is conservative DPO (Mitchell 2023, "A note on DPO with
  noisy preferences"): the expected loss when each label is flipped with probability eps,
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
- ``robust``: robust DPO (Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO", ICML): the
  *unbiased* estimate of the clean loss under a known flip rate eps < 1/2,
  ``[(1 - eps) L(h) - eps L(-h)] / (1 - 2 eps)`` with ``L(h) = -log sigmoid(beta h)``. Unlike
  cDPO it can be negative per pair.
- ``hinge``: SLiC-HF's calibration loss (Zhao et al. 2023) on the DPO log-ratio,
  ``max(0, 1 - beta h)``; beta plays the role of the inverse margin 1/delta.
- ``ipo``: IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
  Human Preferences", eq. 17), ``(h - 1 / (2 beta))^2`` with beta as the paper's tau. By
  default h is built from *per-token mean* log-ratios (each completion's log-ratio divided by
  its length). The paper writes h with sequence log-probs, but the regression target
  1/(2 tau) is a fixed number, so with summed log-probs the right tau depends on the completion
  length; the IPO authors advised Hugging Face to average (TRL PR #1265, HF blog "pref-tuning").
  ``ipo_length_normalize=False`` gives the paper's literal form.
- ``simpo``: SimPO (Meng, Xia & Chen 2024), reference-free and length-normalised,
  ``-log sigmoid(beta * log pi(w)/|w| - beta * log pi(l)/|l| - gamma)`` with the target reward
  margin gamma outside the beta scaling, as in the paper's eq. 6 (the authors' later code
  parametrises gamma / beta instead). The paper uses beta in 2-10 and gamma in 0.3-1.6.

:func:`preference_loss` combines several of them with weights (e.g. ``sigmoid`` + ``simpo``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLogps:
    """Sequence log-probs of a batch of pairs, all ``(B,)``.

    ``*_lengths`` are the numbers of completion tokens the log-probs are summed over; the
    reference log-probs are None for reference-free losses (SimPO).
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None


LossOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _log_ratios(logps: PreferenceLogps, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi - log ref`` of chosen and rejected, ``(B,)`` each."""
    if logps.ref_chosen is None or logps.ref_rejected is None:
        raise ValueError(
            f"preference loss {loss!r} needs reference log-probs (ref_chosen, ref_rejected); "
            "use 'simpo' for a reference-free loss, or pass zeros to drop the reference on purpose"
        )
    return logps.policy_chosen - logps.ref_chosen, logps.policy_rejected - logps.ref_rejected


def _lengths(logps: PreferenceLogps, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    if logps.chosen_lengths is None or logps.rejected_lengths is None:
        raise ValueError(f"preference loss {loss!r} needs chosen_lengths and rejected_lengths (completion token counts)")
    # An empty completion has log-prob 0; dividing by 1 keeps it 0 instead of NaN.
    return logps.chosen_lengths.clamp(min=1), logps.rejected_lengths.clamp(min=1)


def _implicit_rewards(beta: float, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor):
    return (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def _check_flip_rate(label_smoothing: float, upper: float) -> None:
    if not 0.0 <= label_smoothing < upper:
        raise ValueError(f"label_smoothing (label flip rate) must be in [0, {upper}), got {label_smoothing}")


def sigmoid_loss(logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO; conservative DPO when ``label_smoothing`` > 0. See the module docstring."""
    _check_flip_rate(label_smoothing, 1.0)
    chosen_ratio, rejected_ratio = _log_ratios(logps, "sigmoid")
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return (losses, *_implicit_rewards(beta, chosen_ratio, rejected_ratio))


def robust_loss(logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """Robust DPO with label flip rate ``label_smoothing`` in [0, 0.5). See the module docstring."""
    _check_flip_rate(label_smoothing, 0.5)
    chosen_ratio, rejected_ratio = _log_ratios(logps, "robust")
    logits = beta * (chosen_ratio - rejected_ratio)
    eps = label_smoothing
    losses = (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)
    return (losses, *_implicit_rewards(beta, chosen_ratio, rejected_ratio))


def hinge_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """SLiC-style hinge ``max(0, 1 - beta h)``. See the module docstring."""
    chosen_ratio, rejected_ratio = _log_ratios(logps, "hinge")
    losses = torch.relu(1.0 - beta * (chosen_ratio - rejected_ratio))
    return (losses, *_implicit_rewards(beta, chosen_ratio, rejected_ratio))


def ipo_loss(logps: PreferenceLogps, *, beta: float = 0.1, ipo_length_normalize: bool = True) -> LossOutput:
    """IPO ``(h - 1/(2 beta))^2``, h from per-token mean log-ratios unless
    ``ipo_length_normalize=False``. Rewards stay ``beta * (log pi - log ref)`` (summed), as
    for DPO, so reward metrics compare across loss types. See the module docstring."""
    chosen_ratio, rejected_ratio = _log_ratios(logps, "ipo")
    if ipo_length_normalize:
        chosen_lengths, rejected_lengths = _lengths(logps, "ipo")
        h = chosen_ratio / chosen_lengths - rejected_ratio / rejected_lengths
    else:
        h = chosen_ratio - rejected_ratio
    losses = (h - 1.0 / (2.0 * beta)).square()
    return (losses, *_implicit_rewards(beta, chosen_ratio, rejected_ratio))


def simpo_loss(logps: PreferenceLogps, *, beta: float = 2.0, gamma: float = 0.5) -> LossOutput:
    """SimPO ``-log sigmoid(beta * mean_logp(w) - beta * mean_logp(l) - gamma)``; the rewards
    are ``beta * mean_logp``. Reference log-probs are ignored. See the module docstring."""
    chosen_lengths, rejected_lengths = _lengths(logps, "simpo")
    chosen_rewards = beta * logps.policy_chosen / chosen_lengths
    rejected_rewards = beta * logps.policy_rejected / rejected_lengths
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def nll_loss(logps: PreferenceLogps) -> LossOutput:
    """Per-token negative log-likelihood of the chosen completion, ``-log pi(w) / |w|``: the
    term RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization") adds to DPO so the
    chosen answer's likelihood does not fall while the margin grows. Rewards are 0; combine it
    with a pairwise loss, e.g. ``loss_type=["sigmoid", "nll"]``."""
    chosen_lengths, _ = _lengths(logps, "nll")
    zeros = torch.zeros_like(logps.policy_chosen).detach()
    return -logps.policy_chosen / chosen_lengths, zeros, zeros


PREFERENCE_LOSSES: dict[str, Callable[..., LossOutput]] = {
    "sigmoid": sigmoid_loss,
    "robust": robust_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "nll": nll_loss,
}


def _keywords(function: Callable) -> set[str]:
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}


def preference_loss(
    logps: PreferenceLogps,
    loss_types: list[str],
    weights: list[float] | None = None,
    **hyper: float | bool,
) -> LossOutput:
    """Weighted sum of the preference losses named in ``loss_types``.

    Args:
        logps: the batch's :class:`PreferenceLogps`.
        loss_types: names from :data:`PREFERENCE_LOSSES`, e.g. ``["sigmoid"]`` or
            ``["sigmoid", "simpo"]``.
        weights: one per loss type; None weighs each 1.
        **hyper: keyword hyper-parameters (``beta``, ``label_smoothing``, ``gamma``,
            ``ipo_length_normalize``). Each loss receives the ones it takes; a key that no
            registered loss takes is an error (a typo must not be ignored), a key that only
            unselected losses take is ignored so one config can serve every loss type.

    Returns:
        ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``; the rewards are those
        of the first loss type.
    """
    if not loss_types:
        raise ValueError(f"loss_types is empty; choose from: {', '.join(PREFERENCE_LOSSES)}")
    unknown = [name for name in loss_types if name not in PREFERENCE_LOSSES]
    if unknown:
        raise ValueError(f"unknown preference loss type(s) {unknown}; valid: {', '.join(PREFERENCE_LOSSES)}")
    if weights is None:
        weights = [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"got {len(weights)} loss weights for {len(loss_types)} loss types {loss_types}")
    known = set().union(*(_keywords(f) for f in PREFERENCE_LOSSES.values()))
    stray = sorted(set(hyper) - known)
    if stray:
        raise ValueError(f"unknown preference-loss hyper-parameter(s) {stray}; valid: {', '.join(sorted(known))}")
    total = rewards = None
    for name, weight in zip(loss_types, weights):
        function = PREFERENCE_LOSSES[name]
        accepted = _keywords(function)
        losses, chosen_rewards, rejected_rewards = function(logps, **{k: v for k, v in hyper.items() if k in accepted})
        total = weight * losses if total is None else total + weight * losses
        if rewards is None:
            rewards = (chosen_rewards, rejected_rewards)
    return total, rewards[0], rewards[1]


def preference_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, logps: PreferenceLogps
) -> dict[str, torch.Tensor]:
    """Detached batch means: ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``
    (share of pairs with chosen reward > rejected), ``rewards/margins`` (chosen - rejected),
    ``logps/chosen`` and ``logps/rejected`` (policy, summed over tokens)."""
    with torch.no_grad():
        chosen, rejected = chosen_rewards.float(), rejected_rewards.float()
        return {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": logps.policy_chosen.detach().float().mean(),
            "logps/rejected": logps.policy_rejected.detach().float().mean(),
        }
