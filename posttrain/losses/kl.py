"""Per-token estimators of KL(policy || reference) and the KL-coefficient controllers.

Estimators (J. Schulman, "Approximating KL Divergence", 2020), from tokens sampled from the
policy, with ``d = log pi(y_t) - log ref(y_t)`` and ``rho = ref / pi = exp(-d)``:

======  ===========================  ==========================  ===============================
kind    value                        E_pi[value]                 E_pi[gradient] (on-policy)
======  ===========================  ==========================  ===============================
k1      ``d``                        KL(pi||ref), unbiased,      0: ``E_pi[grad log pi] = 0``
                                     can be negative
k2      ``0.5 * d^2``                biased, >= 0, low variance  ``grad KL(pi || ref)``
k3      ``rho - log rho - 1``        KL(pi||ref), unbiased,      ``grad KL(ref || pi)``, the
                                     >= 0, low variance          *forward* KL
======  ===========================  ==========================  ===============================

The gradient column is for the estimator used as a loss term (GRPO's ``beta * k3``), with the
sampled token fixed and samples from the current policy (ratio 1), as the tests check exactly
on a small categorical: ``grad k2 = d * grad log pi`` whose expectation is the gradient of the
reverse KL, while ``grad k3 = (1 - rho) * grad log pi`` whose expectation is
``-E_ref[grad log pi]``, the gradient of the forward KL (Tang & Munos 2025, "On a few pitfalls
in KL divergence gradient estimation for RL"). As a reward penalty (PPO) no gradient flows
through the estimate, and k1 is the usual choice.

Controllers give PPO's KL coefficient: fixed, or adaptive towards a target KL (Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences", section 2.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio


def _k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio.square()


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    # With x = log(ref / pi) = -d: exp(x) - x - 1.
    return torch.expm1(-log_ratio) + log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kind: str = "k3",
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled from the policy.

    Args:
        logps: ``(B, T)`` policy log-probs of the sampled tokens (gradient flows through them).
        ref_logps: ``(B, T)`` reference log-probs of the same tokens (detached here).
        kind: ``"k1"``, ``"k2"`` or ``"k3"``; see the module docstring for bias and gradients.
        mask: optional ``(B, T)`` bool or float; positions outside it are set to 0.

    Returns:
        ``(B, T)`` per-token estimates.
    """
    try:
        estimator = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_ESTIMATORS)}") from None
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} differ in shape")
    if mask is None:
        return estimator(logps - ref_logps.detach())
    if mask.shape != logps.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of logps {tuple(logps.shape)}")
    inside = mask > 0
    # where before the estimator, so padding garbage cannot overflow exp into inf * 0 = NaN.
    log_ratio = torch.where(inside, logps - ref_logps.detach(), 0.0)
    return torch.where(inside, estimator(log_ratio), 0.0)


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {value}")
        self.value = float(value)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Keep the coefficient; returns it."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _restored_value(state, type(self).__name__)


class AdaptiveKLController:
    """KL coefficient steered towards ``target`` (Ziegler et al. 2019, eq. 2)::

        error = clip(current_kl / target - 1, -0.2, 0.2)
        value *= 1 + error * n_steps / horizon

    Args:
        init_value: starting coefficient (>= 0).
        target: the KL (in nats, per sequence as the trainer measures it) to hold (> 0).
        horizon: the time constant in samples (> 0): an error held at +0.2 for ``horizon``
            samples multiplies the coefficient by about ``e^0.2``; the paper uses 10000.
    """

    def __init__(self, init_value: float, target: float, horizon: float) -> None:
        if init_value < 0:
            raise ValueError(f"the initial KL coefficient must be >= 0, got {init_value}")
        if target <= 0:
            raise ValueError(f"the KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"the KL horizon must be > 0, got {horizon}")
        self.value = float(init_value)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Move the coefficient after ``n_steps`` samples whose mean KL was ``current_kl``;
        returns the new value."""
        current = float(current_kl)
        if not math.isfinite(current):
            raise ValueError(f"current_kl must be finite, got {current}")
        error = min(max(current / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The coefficient; ``target`` and ``horizon`` are configuration, not state."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = _restored_value(state, type(self).__name__)


def _restored_value(state: dict[str, float], owner: str) -> float:
    if "value" not in state:
        raise ValueError(f"{owner} state has no 'value' (got keys {sorted(state)}); was it saved by state_dict()?")
    return float(state["value"])
