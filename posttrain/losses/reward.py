"""Bradley-Terry reward-model loss with optional margin and reward centering."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coefficient: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair Bradley-Terry loss of a scalar reward model.

    ``loss = -log sigmoid(r_c - r_r - margin) + center_coefficient * (r_c + r_r)^2``

    The margin (per pair, e.g. from graded preference strength, as in Llama 2) asks the chosen
    reward to win by at least that much. The centering term is the auxiliary loss of Eisenstein
    et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate
    Reward Hacking" (they use 0.01): Bradley-Terry only sees reward differences, so it pins the
    otherwise free offset of the rewards near zero.

    Args:
        chosen_rewards: ``(B,)`` rewards of the preferred completions.
        rejected_rewards: ``(B,)`` rewards of the other completions.
        margin: ``(B,)`` or None.
        center_coefficient: weight of the centering term; 0 disables it.

    Returns:
        ``(losses (B,), metrics)``; metrics are detached scalars: ``accuracy`` (share of pairs
        with ``r_c > r_r``, margin not applied), ``margin`` (mean ``r_c - r_r``),
        ``rewards/chosen``, ``rewards/rejected`` (means), ``rewards/mean``, ``rewards/min``,
        ``rewards/max`` (over both columns).
    """
    difference = chosen_rewards - rejected_rewards
    logits = difference if margin is None else difference - margin
    losses = -F.logsigmoid(logits)
    if center_coefficient:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards).square()
    with torch.no_grad():
        both = torch.cat([chosen_rewards, rejected_rewards]).float()
        metrics = {
            "accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "margin": difference.float().mean(),
            "rewards/chosen": chosen_rewards.float().mean(),
            "rewards/rejected": rejected_rewards.float().mean(),
            "rewards/mean": both.mean(),
            "rewards/min": both.min(),
            "rewards/max": both.max(),
        }
    return losses, {name: value.detach() for name, value in metrics.items()}
