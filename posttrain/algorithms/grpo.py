"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) with the refinements
that later work found to matter, each an option.

Per optimizer step: sample ``num_generations`` completions for each prompt, score them with the
reward functions, and give every completion the advantage of its reward within its group
(:func:`~posttrain.losses.advantages.group_relative_advantages`: minus the group mean, divided
by the group's std, the batch's std, or nothing as in Dr. GRPO; or a leave-one-out baseline as
in RLOO). The update is the clipped surrogate of PPO over the completion tokens, optionally plus
``beta`` x a KL estimate to a reference policy.

Departures from the paper, on purpose:

- ``beta`` defaults to 0 (no KL term, no reference model loaded or run), as DAPO and Dr. GRPO
  recommend for verifiable rewards.
- The loss is aggregated as one token mean over the whole accumulated batch on all processes
  (``loss_type="dapo"``), not a mean of per-sequence means (``"grpo"``), which weighs a long
  completion's tokens less than a short one's.
- ``epsilon_high`` (DAPO's clip-higher), sequence-level ratios (GSPO), dynamic sampling (DAPO:
  groups whose rewards are all equal teach nothing and are replaced by new prompts) and
  ``mask_truncated_completions`` are options.
- With ``num_iterations=1`` the "old" policy is the current one: its log-probs are the
  detached current ones (ratio 1), so no extra forward pass is run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.algorithms.experience import Experience, Samples
from posttrain.algorithms.online import OnlineConfig, OnlineTrainer, Prepared
from posttrain.config import option
from posttrain.losses.advantages import GROUP_ADVANTAGES, group_advantages
from posttrain.losses.kl import KL_ESTIMATORS, kl_estimate
from posttrain.options import require
from posttrain.train.metrics import Metric
from posttrain.train.state import TrainState

# TRL's loss_type names -> how per-token losses are reduced (posttrain.losses.reduce).
LOSS_AGGREGATIONS = {
    "dapo": "token_mean",
    "bnpo": "token_mean",
    "grpo": "sequence_mean",
    "dr_grpo": "sequence_sum_over_constant",
    "token_mean": "token_mean",
    "sequence_mean": "sequence_mean",
    "sequence_sum_over_constant": "sequence_sum_over_constant",
}


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO options (plus the online, reference and TrainConfig options)."""

    learning_rate: float = option(1e-6, "Peak learning rate (AdamW).")
    beta: float = option(0.0, "KL penalty coefficient. 0 (default): no reference model is loaded or run.", range="[0, inf)")
    kl_estimator: str = option("k3", "KL estimator for the penalty: k1, k2 or k3 (Schulman's estimators).", choices=tuple(KL_ESTIMATORS))
    epsilon: float = option(0.2, "Lower clip range of the importance ratio (1 - epsilon).")
    epsilon_high: float | None = option(None, "Upper clip range (1 + epsilon_high); DAPO's clip-higher uses 0.28. Default: epsilon.")
    importance_sampling_level: str = option("token", "token: one ratio per token (PPO, GRPO); sequence: one per completion, the mean token log-ratio (GSPO).")
    loss_type: str = option("dapo", "How token losses are averaged: dapo (token mean over the whole accumulated batch), grpo (mean of per-completion means), dr_grpo (sum over a constant: completions x max_completion_length), bnpo (= dapo here).")
    scale_rewards: str | bool = option("group", "Divide advantages by the group's reward std (group), the whole batch's (batch), or not at all (none, Dr. GRPO).")
    advantage_estimator: str = option("grpo", "grpo: reward minus the group mean; rloo: minus the mean of the group's other completions.")
    dynamic_sampling: bool = option(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal and generate for more prompts until the batch is full.")
    max_sampling_rounds: int = option(4, "With dynamic_sampling, generation rounds per step at most; a batch still short then is filled with equal-reward groups (advantage 0), counted.")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.scale_rewards, bool):  # TRL accepts True/False
            self.scale_rewards = "group" if self.scale_rewards else "none"
        require(
            (self.loss_type in LOSS_AGGREGATIONS, f"loss_type must be one of {sorted(LOSS_AGGREGATIONS)}, got {self.loss_type!r}"),
            (self.scale_rewards in ("group", "batch", "none"), f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}"),
            (self.advantage_estimator in GROUP_ADVANTAGES, f"advantage_estimator must be one of {tuple(GROUP_ADVANTAGES)}, got {self.advantage_estimator!r}"),
            (self.importance_sampling_level in ("token", "sequence"), f"importance_sampling_level must be token or sequence, got {self.importance_sampling_level!r}"),
            (self.num_generations >= 2, "GRPO compares completions of the same prompt: num_generations must be >= 2"),
        )

    @property
    def aggregation(self) -> str:
        return LOSS_AGGREGATIONS[self.loss_type]


class GRPOTrainer(OnlineTrainer):
    """``GRPOTrainer(model, GRPOConfig(...), train_dataset=prompt_rows, reward_funcs=[fn, ...]).train()``.

    Rows are prompt-only: ``prompt`` (a string or a message list) plus any columns, which reach
    every reward function by name."""

    config_class = GRPOConfig

    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def policy_loss_options(self) -> dict:
        cfg = self.config
        return {"clip_low": cfg.epsilon, "clip_high": cfg.epsilon_high, "level": cfg.importance_sampling_level}

    # ------------------------------------------------------------------ experience

    def sample(self, stream: Iterator) -> Samples:
        """With dynamic sampling, generate and score until ``prompts_per_step`` groups have
        reward variance, groups without it set aside (all processes draw the same number of
        batches, so the data position stays in step); the batch is then topped up with those."""
        cfg = self.config
        if not cfg.dynamic_sampling:
            return super().sample(stream)
        kept, spare, rounds, reward_seconds, tool_stats = [], [], 0, 0.0, []
        while True:
            samples = super().sample(stream)
            rounds, reward_seconds = rounds + 1, reward_seconds + samples.stats["time/rewards"]
            tool_stats.append({k: v for k, v in samples.stats.items() if k.startswith("tools/")})
            scores = samples.scores()
            for group in samples.groups():
                (kept if scores[group.start : group.stop].max() > scores[group.start : group.stop].min() else spare).append((samples, group))
            missing = torch.tensor(float(max(cfg.prompts_per_step - len(kept), 0)), device=self.accelerator.device)
            if rounds >= cfg.max_sampling_rounds or float(self.accelerator.reduce(missing, reduction="sum")) == 0:
                break
        joined = Samples.join((kept + spare)[: cfg.prompts_per_step])
        joined.stats = {
            "time/rewards": reward_seconds,
            "dynamic_sampling/rounds": rounds,
            "dynamic_sampling/dropped_groups": len(kept) + len(spare) - cfg.prompts_per_step,
            "dynamic_sampling/filled_without_signal": max(cfg.prompts_per_step - len(kept), 0),
            # with tools: the episodes' figures over every round's episodes (per round, averaged)
            **{key: sum(round_stats[key] for round_stats in tool_stats) / rounds for key in tool_stats[0]},
        }
        return joined

    def make_experience(self, samples: Samples, state: TrainState) -> Prepared:
        cfg = self.config
        experience = Experience.from_samples(samples, cfg.mask_truncated_completions)
        scores = samples.scores()
        advantages = self.advantages(scores)
        experience.advantages = advantages.unsqueeze(1).expand_as(experience.completion_mask)
        if cfg.num_iterations > 1:
            experience.old_logps = self.policy_logps(experience)
        if self.reference is not None:
            experience.ref_logps = self.policy_logps(experience, reference=True)
        return Prepared(experience, self.group_metrics(scores, advantages), {"advantage": advantages.tolist()})

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``(N,)`` advantages of this process's completions; with ``scale_rewards="batch"`` the
        std is taken over every process's rewards."""
        cfg, acc = self.config, self.accelerator
        if cfg.scale_rewards != "batch" or cfg.advantage_estimator != "grpo" or acc.num_processes == 1:
            return group_advantages(cfg.advantage_estimator, rewards, cfg.num_generations, scale=cfg.scale_rewards)
        everything = acc.gather(rewards.to(acc.device)).cpu()
        mine = slice(acc.process_index * len(rewards), (acc.process_index + 1) * len(rewards))
        return group_advantages(cfg.advantage_estimator, everything, cfg.num_generations, scale="batch")[mine]

    def group_metrics(self, rewards: torch.Tensor, advantages: torch.Tensor) -> dict[str, Metric]:
        """The spread of rewards within groups and the advantages of one generation batch."""
        grouped = rewards.reshape(-1, self.config.num_generations)
        no_signal = (grouped.amax(dim=1) == grouped.amin(dim=1)).float()
        return {
            "reward/group_std": Metric.mean(grouped.std(dim=1, unbiased=False).sum(), len(grouped)),
            "frac_reward_zero_std": Metric.mean(no_signal.sum(), len(grouped)),
            "advantages/mean_abs": Metric.mean(advantages.abs().sum(), len(advantages)),
            "advantages/max": Metric.max(advantages.max()),
            "advantages/min": Metric.min(advantages.min()),
        }

    # ------------------------------------------------------------------ the update

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        cfg = self.config
        logps, entropy, _ = self.policy_forward(module, batch)
        per_token, _, metrics = self.policy_gradient(logps, entropy, batch)
        if cfg.beta > 0:
            mask = batch.completion_mask.to(logps.device)
            kl = kl_estimate(logps, batch.ref_logps.to(logps.device), cfg.kl_estimator)
            per_token = per_token + cfg.beta * kl
            metrics["kl"] = Metric.mean((kl.detach() * mask).sum(), mask.sum())
        return self.reduce(per_token, batch, metrics)
