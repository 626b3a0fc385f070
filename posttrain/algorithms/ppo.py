"""Proximal Policy Optimization with a learned critic, as RLHF made it known (Ziegler et al. 2019,
"Fine-Tuning Language Models from Human Preferences"; Ouyang et al. 2022, InstructGPT; the
N+ implementation details of Huang et al. 2024).

One rollout batch (``batch_size`` completions per process) is generated, scored and turned into
experience once: old log-probs and values (one pass of policy and critic), reference log-probs
(when ``kl_coef > 0``), per-token rewards ``score at the last token - kl_coef * KL`` (k1 by
default), advantages and returns by GAE, whitened advantages. It then serves ``ppo_epochs``
passes over shuffled mini-batches of ``per_device_train_batch_size * gradient_accumulation_steps``
completions; each mini-batch is one optimizer step of the loop (clipped policy loss plus
``vf_coef`` x clipped value loss, one token mean over the mini-batch on all processes).

The same experience path serves :meth:`PPOTrainer.train` (prompt data, reward functions) and
the generate/step API (:mod:`posttrain.algorithms.ppo_api`), which shares optimizer, schedule,
metrics, checkpoints and accelerate state with ``train`` through the loop's public steps.

Departures and choices:

- The mini-batch order is a permutation drawn per epoch from a generator seeded by
  ``(seed, step, epoch)``, never from the global RNG: a resumed run replays it exactly, and the
  remaining mini-batches of a rollout batch are in the checkpoint.
- Early stopping (``target_kl``): after an optimizer step whose mini-batch measured an
  approximate KL (k2, to the rollout policy, before that step's update) above ``target_kl``, the
  rest of the rollout batch is skipped and the next step starts a new one. Total optimizer steps
  stay as configured, so an early-stopping run sees more rollout batches.
- ``missing_eos_penalty`` is subtracted from the score of completions that ran to
  ``max_completion_length`` without stopping (no EOS, stop token or stop string).
- Whitening of advantages (and optionally rewards) uses the statistics of all processes, so a
  batch split over processes is normalised as it would be on one.
- The KL coefficient is updated once per rollout batch, after the rewards used it, with the
  mean per-sequence KL of all processes and the global number of completions (Ziegler et al.).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from posttrain.algorithms.experience import Experience, Samples
from posttrain.algorithms.online import OnlineConfig, OnlineTrainer, Prepared
from posttrain.algorithms.ppo_api import StepAPI, split_positional
from posttrain.config import option
from posttrain.errors import ConfigError
from posttrain.losses.advantages import gae, whiten_advantages
from posttrain.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate
from posttrain.losses.policy import clipped_value_loss, explained_variance
from posttrain.models.causal_lm import head_options
from posttrain.models.loading import disable_dropout, is_peft_model, prepare_for_training
from posttrain.models.value import (
    CRITIC_LAYOUTS,
    Critic,
    PolicyWithValue,
    add_critic_adapter,
    check_critic_packing,
    check_same_vocabulary,
    copy_critic,
    hidden_size_of,
    new_value_head,
    value_model_critic,
)
from posttrain.ops import masked_mean
from posttrain.options import require
from posttrain.train.metrics import Metric
from posttrain.train.state import TrainState


@dataclass
class PPOConfig(OnlineConfig):
    """PPO options (plus the online, reference and TrainConfig options)."""

    shuffle_mini_batches: ClassVar[bool] = True

    learning_rate: float = option(3e-6, "Peak learning rate (AdamW), shared by policy and critic.")
    num_generations: int = option(1, "Completions sampled per prompt (PPO compares nothing within a group: 1).", range="[1, inf)")
    batch_size: int | None = option(None, "Completions per rollout batch on each process (TRL's name): generated and scored together, then trained on for ppo_epochs epochs of mini-batches of per_device_train_batch_size x gradient_accumulation_steps completions, one optimizer step each. None: one mini-batch.")
    ppo_epochs: int = option(4, "Passes over each rollout batch.")
    gamma: float = option(1.0, "Discount factor of GAE.")
    lam: float = option(0.95, "GAE lambda: 1 gives Monte Carlo returns, 0 one-step TD targets.")
    cliprange: float = option(0.2, "Clip range of the policy's importance ratio (1 +- cliprange).")
    cliprange_value: float | None = option(0.2, "Clip range of the value update around the rollout values; None: no value clipping.")
    vf_coef: float = option(0.1, "Weight of the value loss in the loss.")
    kl_coef: float = option(0.05, "KL penalty coefficient in the reward (the starting value with adap_kl_ctrl). 0: no reference model is loaded or run.")
    kl_estimator: str = option("k1", "Per-token KL estimator of the penalty: k1 (log-ratio, unbiased; the usual choice), k2 or k3.")
    adap_kl_ctrl: bool = option(False, "Adapt kl_coef towards kl_target (Ziegler et al. 2019) instead of keeping it fixed.")
    kl_target: float = option(6.0, "With adap_kl_ctrl: the per-sequence KL (nats) to hold.")
    kl_horizon: float = option(10000.0, "With adap_kl_ctrl: the controller's time constant, in completions.")
    target_kl: float | None = option(None, "Early stop: skip the rest of a rollout batch once a mini-batch's approximate KL to the rollout policy exceeds this; None: never.")
    missing_eos_penalty: float | None = option(None, "Subtracted from the score of completions that never stopped (cut at max_completion_length).")
    whiten_rewards: bool = option(False, "Scale the per-token rewards to unit variance (mean kept) before GAE.")
    whiten_advantages: bool = option(True, "Normalise advantages to mean 0, variance 1 over the rollout batch (all processes).")
    critic: str = option("auto", "The critic's layout: copy (a copy of the policy backbone + value head), shared (a value head on the policy's own trunk: less memory, one forward), adapter (LoRA only: a second adapter set on the policy's base model), auto (adapter with LoRA, else copy). A value_model always gets its own backbone.")
    value_model: str | None = option(None, "Initialise the critic from this model (e.g. the trained reward model: its backbone and score head); Python callers may pass value_model=<model object>.")

    def __post_init__(self):
        if self.batch_size is None:
            self.batch_size = self.mini_batch_size
        super().__post_init__()
        require(
            (self.batch_size >= 1 and self.batch_size % self.mini_batch_size == 0,
             (f"batch_size = {self.batch_size} completions per rollout batch must be a multiple of the mini-batch, "
              f"per_device_train_batch_size x gradient_accumulation_steps = {self.mini_batch_size}. Fix: change one of them")),
            (self.num_iterations == 1, "num_iterations is GRPO's reuse of a generation batch; PPO's is ppo_epochs (x mini-batches). Fix: leave num_iterations at 1"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (self.cliprange > 0 and (self.cliprange_value is None or self.cliprange_value > 0), "cliprange and cliprange_value must be > 0 (cliprange_value may be None: no clipping)"),
            (self.vf_coef >= 0 and self.kl_coef >= 0, f"vf_coef and kl_coef must be >= 0, got {self.vf_coef} and {self.kl_coef}"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}"),
            (self.critic in CRITIC_LAYOUTS, f"critic must be one of {CRITIC_LAYOUTS}, got {self.critic!r}"),
            (self.target_kl is None or self.target_kl > 0, f"target_kl must be > 0 or None, got {self.target_kl}"),
            (not self.adap_kl_ctrl or (self.kl_target > 0 and self.kl_horizon > 0), "kl_target and kl_horizon must be > 0"),
        )

    @property
    def rollout_size(self) -> int:
        return self.batch_size

    @property
    def epochs_per_rollout(self) -> int:
        return self.ppo_epochs


class PPOTargets(NamedTuple):
    """What PPO computes from a rollout batch, all ``(N, L)`` but ``scores`` and ``sequence_kl``
    ``(N,)``: ``kl`` per token (0 without a reference), ``rewards`` (the scores on the last
    tokens minus ``kl_coef`` x KL, whitened when asked), raw ``gae_advantages``, ``advantages``
    (whitened when asked), ``returns``; ``scores`` after the missing-EOS penalty."""

    kl: torch.Tensor
    rewards: torch.Tensor
    gae_advantages: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor
    sequence_kl: torch.Tensor


class PPOTrainer(StepAPI, OnlineTrainer):
    """``PPOTrainer(model, PPOConfig(...), train_dataset=prompt_rows, reward_funcs=[fn]).train()``,
    or TRL's positional form ``PPOTrainer(config, model, tokenizer)`` driven by
    :meth:`generate` and :meth:`step`. ``value_model=`` (a path or model) initialises the critic."""

    config_class = PPOConfig
    prompt_groups_unsupported = "the update reads values from the policy's trunk"

    def __init__(self, *args, value_model=None, **kwargs):
        model, config, kwargs = split_positional(args, kwargs)
        self._value_model_source = value_model
        super().__init__(model, config, **kwargs)
        cfg = self.config
        if cfg.adap_kl_ctrl:
            self.kl_controller = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        else:
            self.kl_controller = FixedKLController(cfg.kl_coef)
        self._approxkl = torch.zeros(2)

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def policy_loss_options(self) -> dict:
        return {"clip_low": self.config.cliprange}

    def checkpoint_objects(self) -> list:
        return [self.buffer, self.kl_controller]

    # ------------------------------------------------------------------ policy and critic

    def load_model(self, model):
        policy = super().load_model(model)
        self.critic_layout, self.critic = self._build_critic(policy)
        return policy

    def _build_critic(self, policy) -> tuple[str, Critic]:
        cfg = self.config
        source = self._value_model_source if self._value_model_source is not None else cfg.value_model
        lora = is_peft_model(policy)
        layout = cfg.critic if cfg.critic != "auto" else ("adapter" if lora else "copy")
        if source is not None:
            if cfg.critic not in ("auto", "copy"):
                raise ConfigError(f"value_model gives the critic its own backbone; critic={cfg.critic!r} cannot apply. Fix: critic=auto (or copy)")
            layout, critic = "copy", value_model_critic(source, model_dtype=cfg.model_dtype, attn_implementation=cfg.attn_implementation)
            critic.backbone = prepare_for_training(critic.backbone, cfg, task_type="FEATURE_EXTRACTION")
        elif layout == "copy":
            critic = copy_critic(policy)
        elif layout == "shared":
            critic = Critic(new_value_head(hidden_size_of(policy.get_base_model() if lora else policy)))
        else:
            if not lora:
                raise ConfigError("critic='adapter' puts a second LoRA adapter set on the policy: it needs use_lora=true. Fix: use_lora=true, or critic=copy / shared")
            if cfg.gradient_checkpointing:
                raise ConfigError("critic='adapter' cannot be combined with gradient_checkpointing (the backward recomputation would run with the wrong adapter active). Fix: critic=copy or shared, or gradient_checkpointing=false")
            critic = add_critic_adapter(policy, cfg)
        check_same_vocabulary(policy, critic)
        if cfg.disable_dropout:
            disable_dropout(critic)
        return layout, critic

    def wrap_model(self, model) -> torch.nn.Module:
        self.check_packing(model)
        if self.config.packing:
            check_critic_packing(self.critic)
        return PolicyWithValue(model, self.critic, self.critic_layout, **head_options(model, self.config))

    # ------------------------------------------------------------------ experience

    def make_experience(self, samples: Samples, state: TrainState) -> Prepared:
        """Old log-probs and values (one pass of policy and critic), reference log-probs,
        KL-penalised rewards, GAE; then the KL controller moves."""
        experience = Experience.from_samples(samples, self.config.mask_truncated_completions)
        module, temperature = self._policy_module(), self.config.temperature

        def policy_and_values(input_ids, position_ids, scored):
            output = module(input_ids, position_ids, temperature=temperature, with_values=True, positions=scored)
            return {"logps": output.logps, "values": output.values}

        passes = self.scoring_pass(experience, policy_and_values)
        ref_logps = self.policy_logps(experience, reference=True) if self.reference is not None else None
        targets = self.ppo_targets(experience, passes["logps"], passes["values"], ref_logps)
        experience.old_logps, experience.old_values = passes["logps"], passes["values"]
        experience.advantages, experience.returns = targets.advantages, targets.returns
        metrics = self.ppo_metrics(experience, targets)
        self.update_kl_controller(targets)
        columns = {"reward": targets.scores.tolist(), "kl": targets.sequence_kl.tolist(),
                   "value": experience.old_values[:, 0].tolist(), "return": experience.returns[:, 0].tolist()}
        return Prepared(experience, metrics, columns)

    def ppo_targets(self, experience: Experience, logps: torch.Tensor, values: torch.Tensor, ref_logps: torch.Tensor | None) -> PPOTargets:
        """:class:`PPOTargets` of ``experience`` from the ``(N, L)`` old log-probs, values and
        reference log-probs (None: no KL term)."""
        cfg, mask = self.config, experience.completion_mask
        token_rewards = experience.rewards.clone()
        completions = experience.samples.completions
        if cfg.missing_eos_penalty:
            lengths = torch.tensor([len(c.token_ids) for c in completions])
            never_stopped = torch.tensor([float(c.truncated) for c in completions])
            token_rewards[torch.arange(len(completions)), lengths - 1] -= cfg.missing_eos_penalty * never_stopped
        kl = torch.zeros_like(logps) if ref_logps is None else kl_estimate(logps, ref_logps, cfg.kl_estimator, mask=mask)
        rewards = token_rewards - self.kl_controller.value * kl
        if cfg.whiten_rewards:
            rewards = whiten_advantages(rewards, mask, shift_mean=False, all_reduce=self._sum_over_processes)
        gae_advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = whiten_advantages(gae_advantages, mask, all_reduce=self._sum_over_processes) if cfg.whiten_advantages else gae_advantages
        return PPOTargets(kl, rewards, gae_advantages, advantages, returns, token_rewards.sum(dim=1), (kl * mask).sum(dim=1))

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        acc = self.accelerator
        return acc.reduce(tensor.to(acc.device), reduction="sum").to(tensor.device)

    def update_kl_controller(self, targets: PPOTargets) -> None:
        """Move the KL coefficient with the mean per-sequence KL and the number of completions
        of all processes."""
        kl = targets.sequence_kl
        totals = self._sum_over_processes(torch.stack([kl.sum(), torch.tensor(float(kl.numel()))]))
        self.kl_controller.update(float(totals[0] / totals[1]), int(totals[1]))

    def ppo_metrics(self, experience: Experience, targets: PPOTargets) -> dict[str, Metric]:
        """TRL's PPO metrics of one rollout batch, and the critic's."""
        mask, n = experience.completion_mask, len(experience)
        tokens = mask.sum()
        non_score = -self.kl_controller.value * targets.sequence_kl
        metrics = {
            "objective/scores": Metric.mean(targets.scores.sum(), n),
            "objective/kl": Metric.mean(targets.sequence_kl.sum(), n),
            "objective/non_score_reward": Metric.mean(non_score.sum(), n),
            "objective/rlhf_reward": Metric.mean((targets.scores + non_score).sum(), n),
            "objective/entropy": Metric.mean((-experience.old_logps * mask).sum(), n),
            "objective/kl_coef": Metric.mean(self.kl_controller.value),
            "returns/mean": Metric.mean((targets.returns * mask).sum(), tokens),
            "returns/var": Metric.mean(_masked_var(targets.returns, mask)),
            "advantages/mean": Metric.mean((targets.gae_advantages * mask).sum(), tokens),
            "advantages/var": Metric.mean(_masked_var(targets.gae_advantages, mask)),
            "val/mean": Metric.mean((experience.old_values * mask).sum(), tokens),
        }
        explained = explained_variance(experience.old_values, targets.returns, mask)
        if torch.isfinite(explained):
            metrics["val/explained_variance"] = Metric.mean(explained)
        return metrics

    # ------------------------------------------------------------------ the update

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        cfg = self.config
        logps, entropy, values = self.policy_forward(module, batch, with_values=True)
        per_token, policy, metrics = self.policy_gradient(logps, entropy, batch)
        device = logps.device
        mask, old_logps = batch.completion_mask.to(device), batch.old_logps.to(device)
        value_loss, value_clipped = clipped_value_loss(values, batch.old_values.to(device), batch.returns.to(device), mask, cfg.cliprange_value)
        tokens = mask.sum()
        approxkl = (kl_estimate(logps.detach(), old_logps, "k2", mask=mask) * mask).sum()
        self._approxkl += torch.stack([approxkl.detach().float().cpu(), tokens.detach().float().cpu()])
        metrics |= {
            "loss/policy_avg": Metric.mean((per_token * mask).sum(), tokens),
            "loss/value_avg": Metric.mean((value_loss * mask).sum(), tokens),
            "policy/approxkl_avg": Metric.mean(approxkl, tokens),
            "val/ratio": Metric.mean((policy.ratio * mask).sum(), tokens),
            "val/clipfrac_avg": Metric.mean((value_clipped.float() * mask).sum(), tokens),
        }
        return self.reduce(per_token + cfg.vf_coef * value_loss, batch, metrics)

    def optimizer_step(self, run, window, metrics=None) -> None:
        """The loop's step, then early stopping (``target_kl``): when this step's mini-batch
        measured an approximate KL above the target, the rest of the rollout batch is dropped."""
        metrics = run.metrics if metrics is None else metrics
        self._approxkl = torch.zeros(2)
        super().optimizer_step(run, window, metrics)
        target = self.config.target_kl
        if target is None:
            return
        totals = self._sum_over_processes(self._approxkl)
        stopped = bool(totals[0] / totals[1].clamp(min=1) > target)
        metrics.update({"policy/early_stop": Metric.mean(float(stopped))})
        if stopped:
            metrics.update({"policy/skipped_steps": Metric.mean(self.buffer.clear())})


def _masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of ``values`` over the mask (a metric of this process's batch)."""
    return masked_mean((values - masked_mean(values, mask)).square(), mask)


__all__ = ["PPOConfig", "PPOTargets", "PPOTrainer"]
