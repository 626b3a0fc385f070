"""REINFORCE with a leave-one-out baseline (RLOO; Kool et al. 2019, "Buy 4 REINFORCE Samples, Get
a Baseline for Free!"; Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs").

Each prompt is sampled ``num_generations`` (k) times; a completion's advantage is its reward minus
the mean reward of the other k - 1 (:func:`~posttrain.losses.advantages.leave_one_out_advantages`),
and the update is plain REINFORCE on the whole completion, ``-A * sum_t log pi(y_t)``
(:func:`~posttrain.losses.policy.reinforce_policy_loss`), averaged over completions.

Departures from the paper:

- No KL penalty to a reference in the reward: the objective is reference-free (no reference is
  loaded or run).
- The summed log-probs are also divided by ``max_completion_length`` (the
  ``sequence_sum_over_constant`` aggregation of Dr. GRPO), a constant factor that keeps learning
  rates comparable with GRPO's and weighs every token the same whatever its completion's length.
- One optimizer step per generation batch: REINFORCE is on-policy, so no ratio is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posttrain.algorithms.experience import Experience, Samples
from posttrain.algorithms.online import OnlineConfig, OnlineTrainer, Prepared
from posttrain.config import option
from posttrain.losses.advantages import group_advantages
from posttrain.options import require
from posttrain.train.metrics import Metric
from posttrain.train.state import TrainState


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO options (plus the online and TrainConfig options)."""

    aggregation: ClassVar[str] = "sequence_sum_over_constant"

    learning_rate: float = option(1e-6, "Peak learning rate (AdamW).")
    num_generations: int = option(4, "Completions per prompt (k); each one's baseline is the mean reward of the other k - 1.", range="[2, inf)")

    def __post_init__(self):
        super().__post_init__()
        require((self.num_iterations == 1, "RLOO is on-policy REINFORCE: one optimizer step per generation batch. Fix: leave num_iterations at 1"))


class RLOOTrainer(OnlineTrainer):
    """``RLOOTrainer(model, RLOOConfig(...), train_dataset=prompt_rows, reward_funcs=[fn, ...]).train()``:
    prompt-only rows, as for GRPO."""

    config_class = RLOOConfig
    policy_loss_name = "reinforce"

    def make_experience(self, samples: Samples, state: TrainState) -> Prepared:
        experience = Experience.from_samples(samples, self.config.mask_truncated_completions)
        advantages = group_advantages("rloo", samples.scores(), self.config.num_generations)
        experience.advantages = advantages.unsqueeze(1).expand_as(experience.completion_mask)
        metrics = {"advantages/mean_abs": Metric.mean(advantages.abs().sum(), len(advantages))}
        return Prepared(experience, metrics, {"advantage": advantages.tolist()})

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        logps, entropy, _ = self.policy_forward(module, batch)
        per_token, _, metrics = self.policy_gradient(logps, entropy, batch)
        return self.reduce(per_token, batch, metrics)
