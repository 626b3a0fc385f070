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

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.algorithms.experience import Rollout, completion_view
from posttrain.algorithms.online import OnlineConfig, OnlineTrainer, completion_metrics, reward_metrics
from posttrain.config import option
from posttrain.errors import ConfigError
from posttrain.losses.advantages import group_relative_advantages, leave_one_out_advantages
from posttrain.losses.kl import kl_estimate
from posttrain.losses.policy import clipped_policy_loss
from posttrain.losses.reduce import aggregate
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
ADVANTAGE_ESTIMATORS = ("grpo", "rloo")


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO options (plus the online, reference and TrainConfig options)."""

    learning_rate: float = option(1e-6, "Peak learning rate (AdamW).")
    beta: float = option(0.0, "KL penalty coefficient. 0 (default): no reference model is loaded or run.")
    kl_estimator: str = option("k3", "KL estimator for the penalty: k1, k2 or k3 (Schulman's estimators).")
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
        if self.loss_type not in LOSS_AGGREGATIONS:
            raise ConfigError(f"loss_type must be one of {sorted(LOSS_AGGREGATIONS)}, got {self.loss_type!r}")
        if isinstance(self.scale_rewards, bool):  # TRL accepts True/False
            self.scale_rewards = "group" if self.scale_rewards else "none"
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ConfigError(f"importance_sampling_level must be token or sequence, got {self.importance_sampling_level!r}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.num_generations < 2:
            raise ConfigError("GRPO compares completions of the same prompt: num_generations must be >= 2")

    @property
    def aggregation(self) -> str:
        return LOSS_AGGREGATIONS[self.loss_type]


@dataclass
class Group:
    """One prompt's ``num_generations`` samples with their rewards."""

    item: dict
    completions: list
    rewards: torch.Tensor  # (G,)
    per_function: torch.Tensor  # (G, F), NaN where a function does not apply

    @property
    def has_signal(self) -> bool:
        return bool(self.rewards.max() > self.rewards.min())


class GRPOTrainer(OnlineTrainer):
    """``GRPOTrainer(model, GRPOConfig(...), train_dataset=prompt_rows, reward_funcs=[fn, ...]).train()``.

    Rows are prompt-only: ``prompt`` (a string or a message list) plus any columns, which reach
    every reward function by name."""

    config_class = GRPOConfig

    def needs_reference(self) -> bool:
        return self.config.beta > 0

    # ------------------------------------------------------------------ experience

    def make_window(self, module, stream: Iterator, state: TrainState) -> list[dict]:
        cfg = self.config
        groups, stats = self.sample_groups(module, stream)
        rewards = torch.cat([g.rewards for g in groups])
        advantages = self.advantages(rewards)
        rollouts = []
        for g, group in enumerate(groups):
            for k, completion in enumerate(group.completions):
                trained = 0.0 if cfg.mask_truncated_completions and completion.finish_reason == "length" else 1.0
                rollouts.append(
                    Rollout(
                        group.item["prompt_ids"],
                        list(completion.token_ids),
                        [trained] * len(completion.token_ids),
                        sequence_values={"advantages": float(advantages[g * cfg.num_generations + k])},
                    )
                )
        start = time.perf_counter()
        if cfg.num_iterations > 1:
            for rollout, logps in zip(rollouts, self.token_logps(rollouts)):
                rollout.token_values["old_logps"] = logps
        if cfg.beta > 0:
            for rollout, logps in zip(rollouts, self.token_logps(rollouts, reference=True)):
                rollout.token_values["ref_logps"] = logps
        stats["time/logps"] = time.perf_counter() - start
        window = self.collate_window(rollouts)
        window[0]["rollout_metrics"] = self.rollout_metrics(groups, advantages, stats)
        self.log_rollouts(state, groups, advantages)
        return window

    def sample_groups(self, module, stream: Iterator) -> tuple[list[Group], dict]:
        """Generate and score until ``prompts_per_step`` groups are ready. With dynamic
        sampling, groups without reward variance are set aside and more prompts are drawn (all
        processes draw the same number of batches, so the data position stays in step)."""
        cfg = self.config
        kept, spare = [], []
        stats = {"time/generation": 0.0, "time/rewards": 0.0, "generated_tokens": 0, "groups_seen": 0, "rounds": 0}
        while True:
            generated = self.generate_and_score(module, stream)
            stats["time/generation"] += generated.generation_seconds
            stats["time/rewards"] += generated.reward_seconds
            stats["generated_tokens"] += sum(len(c.token_ids) for c in generated.completions)
            stats["rounds"] += 1
            for group in self._groups(generated):
                stats["groups_seen"] += 1
                (kept if group.has_signal or not cfg.dynamic_sampling else spare).append(group)
            missing = torch.tensor(float(max(cfg.prompts_per_step - len(kept), 0)), device=self.accelerator.device)
            if not cfg.dynamic_sampling or stats["rounds"] >= cfg.max_sampling_rounds:
                break
            if float(self.accelerator.reduce(missing, reduction="sum")) == 0:
                break
        stats["filled_without_signal"] = max(cfg.prompts_per_step - len(kept), 0)
        groups = (kept + spare)[: cfg.prompts_per_step]
        return groups, stats

    def _groups(self, generated) -> list[Group]:
        size = self.config.num_generations
        result = generated.rewards
        return [
            Group(item, generated.completions[i * size : (i + 1) * size], result.total[i * size : (i + 1) * size].float(), result.per_function[i * size : (i + 1) * size])
            for i, item in enumerate(generated.items)
        ]

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``(N,)`` advantages of this process's completions; with ``scale_rewards="batch"`` the
        std is taken over every process's rewards."""
        cfg, acc = self.config, self.accelerator
        if cfg.advantage_estimator == "rloo":
            return leave_one_out_advantages(rewards, cfg.num_generations)
        if cfg.scale_rewards != "batch" or acc.num_processes == 1:
            return group_relative_advantages(rewards, cfg.num_generations, scale=cfg.scale_rewards)
        everything = acc.gather(rewards.to(acc.device)).cpu()
        mine = slice(acc.process_index * len(rewards), (acc.process_index + 1) * len(rewards))
        return group_relative_advantages(everything, cfg.num_generations, scale="batch")[mine]

    # ------------------------------------------------------------------ the update

    def count_units(self, batch) -> torch.Tensor:
        mask = batch["completion_mask"]
        return aggregate(self.config.aggregation, torch.zeros_like(mask), mask, max_len=self.config.max_completion_length).count

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        cfg = self.config
        stats = module(
            batch["input_ids"], batch["position_ids"], temperature=cfg.temperature, with_stats=True, positions=batch.get("completion_positions")
        )
        index, mask = batch["completion_index"], batch["completion_mask"].to(stats.logps.device)
        logps = completion_view(stats.logps, index)
        old = batch["old_logps"].to(logps.device) if "old_logps" in batch else logps.detach()
        per_token, policy = clipped_policy_loss(
            logps, old, batch["advantages"].to(logps.device), mask,
            clip_low=cfg.epsilon, clip_high=cfg.epsilon_high, level=cfg.importance_sampling_level,
        )
        metrics = {}
        if cfg.beta > 0:
            kl = kl_estimate(logps, batch["ref_logps"].to(logps.device), cfg.kl_estimator)
            per_token = per_token + cfg.beta * kl
            metrics["kl"] = Metric.mean((kl.detach() * mask).sum(), mask.sum())
        loss = aggregate(cfg.aggregation, per_token, mask, max_len=cfg.max_completion_length)
        tokens = mask.sum()
        metrics.update(
            {
                "loss": Metric.mean(loss.total, loss.count),
                "entropy": Metric.mean((completion_view(stats.entropy, index) * mask).sum(), tokens),
                "clip_ratio/low": Metric.mean((policy.clipped_low.float() * mask).sum(), tokens),
                "clip_ratio/high": Metric.mean((policy.clipped_high.float() * mask).sum(), tokens),
            }
        )
        # the generation batch's metrics, once: later passes over the same batch find them gone
        metrics.update(batch.pop("rollout_metrics", {}))
        return loss.total, metrics

    # ------------------------------------------------------------------ reporting

    def rollout_metrics(self, groups: list[Group], advantages: torch.Tensor, stats: dict) -> dict[str, Metric]:
        """Metrics of one generation batch (carried by its first micro-batch, counted once)."""
        rewards = torch.cat([g.rewards for g in groups])
        completions = [c for g in groups for c in g.completions]
        group_std = torch.stack([g.rewards.std(unbiased=False) for g in groups])
        no_signal = sum(not g.has_signal for g in groups)
        metrics = reward_metrics(rewards, torch.cat([g.per_function for g in groups]), self.rewards.names)
        metrics |= {
            "reward/group_std": Metric.mean(group_std.sum(), len(groups)),
            "reward/zero_std_groups": Metric.mean(no_signal, len(groups)),
            "advantages/mean_abs": Metric.mean(advantages.abs().sum(), len(advantages)),
            "advantages/max": Metric.max(advantages.max()),
            "advantages/min": Metric.min(advantages.min()),
            "time/generation": Metric.mean(stats["time/generation"]),
            "time/rewards": Metric.mean(stats["time/rewards"]),
            "time/logps": Metric.mean(stats["time/logps"]),
            "generation/tokens_per_second": Metric.mean(stats["generated_tokens"], max(stats["time/generation"], 1e-9)),
        }
        if self.config.dynamic_sampling:
            metrics["dynamic_sampling/rounds"] = Metric.mean(stats["rounds"])
            metrics["dynamic_sampling/dropped_groups"] = Metric.mean(stats["groups_seen"] - len(groups))
            metrics["dynamic_sampling/filled_without_signal"] = Metric.mean(stats["filled_without_signal"])
        metrics.update(completion_metrics(completions))
        return metrics

    def log_rollouts(self, state: TrainState, groups: list[Group], advantages: torch.Tensor) -> None:
        """The completion log, when one of the steps this generation batch serves is due."""
        due = self.completion_log_step(state, self.config.num_iterations)
        if due is None:
            return
        rows = []
        for g, group in enumerate(groups):
            for k, completion in enumerate(group.completions):
                n = g * self.config.num_generations + k
                row = {"prompt": group.item["prompt"], "completion": completion.text, "reward": float(group.rewards[k])}
                row.update({name: float(group.per_function[k, f]) for f, name in enumerate(self.rewards.names)})
                row["advantage"] = float(advantages[n])
                rows.append(row)
        self.completion_log.log(due, rows)
