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
metrics, checkpoints and accelerate state with ``train``.

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

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.algorithms.experience import Rollout, completion_view, right_padded, split_micro_batches
from posttrain.algorithms.online import OnlineConfig, OnlineTrainer, completion_metrics, reward_metrics
from posttrain.algorithms.ppo_api import StepAPI, split_positional
from posttrain.config import option
from posttrain.errors import ConfigError
from posttrain.losses.advantages import gae, whiten_advantages
from posttrain.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate
from posttrain.losses.policy import clipped_policy_loss, clipped_value_loss, explained_variance
from posttrain.losses.reduce import aggregate
from posttrain.models.causal_lm import head_options
from posttrain.models.loading import apply_lora, disable_dropout, enable_activation_checkpointing, is_peft_model
from posttrain.models.packing_check import check_packing_isolation
from posttrain.models.value import (
    CRITIC_LAYOUTS,
    Critic,
    PolicyWithValue,
    add_critic_adapter,
    check_critic_packing,
    check_same_vocabulary,
    copy_critic,
    hidden_size_of,
    kept_trainable,
    new_value_head,
    value_model_critic,
)
from posttrain.ops import masked_mean
from posttrain.train.metrics import Metric
from posttrain.train.state import TrainState


@dataclass
class PPOConfig(OnlineConfig):
    """PPO options (plus the online, reference and TrainConfig options)."""

    learning_rate: float = option(3e-6, "Peak learning rate (AdamW), shared by policy and critic.")
    num_generations: int = option(1, "Completions sampled per prompt (PPO compares nothing within a group: 1).")
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
        checks = [
            (self.batch_size >= 1 and self.batch_size % self.mini_batch_size == 0,
             (f"batch_size = {self.batch_size} completions per rollout batch must be a multiple of the mini-batch, "
              f"per_device_train_batch_size x gradient_accumulation_steps = {self.mini_batch_size}. Fix: change one of them")),
            (self.batch_size % self.num_generations == 0, f"batch_size = {self.batch_size} must be a multiple of num_generations = {self.num_generations}"),
            (self.num_iterations == 1, "num_iterations is GRPO's reuse of a generation batch; PPO's is ppo_epochs (x mini-batches). Fix: leave num_iterations at 1"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (self.cliprange > 0 and (self.cliprange_value is None or self.cliprange_value > 0), "cliprange and cliprange_value must be > 0 (cliprange_value may be None: no clipping)"),
            (self.vf_coef >= 0 and self.kl_coef >= 0, f"vf_coef and kl_coef must be >= 0, got {self.vf_coef} and {self.kl_coef}"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}"),
            (self.critic in CRITIC_LAYOUTS, f"critic must be one of {CRITIC_LAYOUTS}, got {self.critic!r}"),
            (self.target_kl is None or self.target_kl > 0, f"target_kl must be > 0 or None, got {self.target_kl}"),
            (not self.adap_kl_ctrl or (self.kl_target > 0 and self.kl_horizon > 0), "kl_target and kl_horizon must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def mini_batch_size(self) -> int:
        """Completions per optimizer step on each process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def num_mini_batches(self) -> int:
        return self.batch_size // self.mini_batch_size

    @property
    def prompts_per_step(self) -> int:
        """Prompts per rollout batch on each process."""
        return self.batch_size // self.num_generations


@dataclass
class Samples:
    """One rollout batch before it becomes experience: ``items`` (one per completion: ``prompt``
    for logs, ``prompt_ids``), ``completions`` (:class:`~posttrain.rollout.Completion`),
    ``token_rewards`` (one float per completion token: the score on the last token, or the
    caller's per-token rewards), the reward functions' result (None from ``step``) and times."""

    items: list[dict]
    completions: list
    token_rewards: list[list[float]]
    reward_result: object = None
    generation_seconds: float = 0.0
    reward_seconds: float = 0.0


def shuffle_seed(seed: int, step: int, epoch: int) -> int:
    """The seed of the mini-batch permutation of ``epoch`` of the rollout batch made at ``step``."""
    return ((seed * 1_000_003 + step) * 1_009 + epoch) % (2**63 - 1)


class PPOTrainer(StepAPI, OnlineTrainer):
    """``PPOTrainer(model, PPOConfig(...), train_dataset=prompt_rows, reward_funcs=[fn]).train()``,
    or TRL's positional form ``PPOTrainer(config, model, tokenizer)`` driven by
    :meth:`generate` and :meth:`step`. ``value_model=`` (a path or model) initialises the critic."""

    config_class = PPOConfig

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
        self._generated = {}  # (prompt ids, text) -> Completion of generate(), for step()
        self._generation_seconds = 0.0  # spent in generate() since the last step()

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    # ------------------------------------------------------------------ data and schedule

    def build_batch_source(self, rows, split: str):
        if rows is None:  # driven by step(): no prompt data
            self._columns, self._prompt_capacity, self._conversational = [], 0, False
            return None
        return super().build_batch_source(rows, split)

    def _dataset_rows(self, train_dataset, eval_dataset):
        if train_dataset is None and self.config.train_data is None:
            return None, None
        return super()._dataset_rows(train_dataset, eval_dataset)

    def train(self):
        if self.train_source is None:
            raise ConfigError(
                "train() needs prompt rows: pass train_dataset=[{'prompt': ...}, ...] (or set train_data). "
                "To drive PPO yourself, call generate() and step() instead"
            )
        return super().train()

    def steps_per_generation(self) -> int:
        return self.config.ppo_epochs * self.config.num_mini_batches

    def total_steps(self, micro_batches_per_epoch: int) -> int:
        if self.train_source is None:  # step(): as long as the caller goes on, unless max_steps
            return self.config.max_steps
        return super().total_steps(micro_batches_per_epoch)

    def build_lr_scheduler(self, optimizer, total_steps: int):
        if total_steps > 0:
            return super().build_lr_scheduler(optimizer, total_steps)
        from transformers import get_scheduler

        if self.config.warmup_ratio > 0 and self.config.warmup_steps == 0:
            self.reporter.print("[yellow]step() without max_steps has no known length: warmup_ratio is ignored (use warmup_steps)[/]")
        return get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=self.config.warmup_steps)

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
            if cfg.gradient_checkpointing:
                enable_activation_checkpointing(critic.backbone, cfg.gradient_checkpointing_fraction)
            if cfg.use_lora:
                critic.backbone = apply_lora(critic.backbone, cfg, task_type="FEATURE_EXTRACTION")
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

    def _reference_token_logps(self, input_ids, position_ids, positions=None) -> torch.Tensor:
        # peft's disable_adapter() leaves only the active adapter trainable afterwards: keep the critic's
        with kept_trainable(self.model):
            return super()._reference_token_logps(input_ids, position_ids, positions)

    def wrap_model(self, model) -> torch.nn.Module:
        if self.config.packing:
            check_packing_isolation(model, batch_rows=2, device=self.accelerator.device)
            check_critic_packing(self.critic)
        return PolicyWithValue(model, self.critic, self.critic_layout, **head_options(model, self.config))

    # ------------------------------------------------------------------ making experience

    def make_windows(self, module, stream: Iterator, state: TrainState) -> list[list[dict]]:
        generated = self.generate_and_score(module, stream)
        items = [item for item in generated.items for _ in range(self.config.num_generations)]
        total = generated.rewards.total.tolist()
        token_rewards = [[0.0] * (len(c.token_ids) - 1) + [score] for c, score in zip(generated.completions, total)]
        samples = Samples(items, generated.completions, token_rewards, generated.rewards, generated.generation_seconds, generated.reward_seconds)
        return self.experience_windows(samples, state)

    def experience_windows(self, samples: Samples, state: TrainState) -> list[list[dict]]:
        """Turn a rollout batch into the windows of its ``ppo_epochs x num_mini_batches``
        optimizer steps (see the module docstring); updates the KL controller."""
        cfg = self.config
        rollouts = [
            Rollout(item["prompt_ids"], list(c.token_ids), [0.0 if cfg.mask_truncated_completions and c.truncated else 1.0] * len(c.token_ids))
            for item, c in zip(samples.items, samples.completions)
        ]
        start = time.perf_counter()
        passes = self.policy_and_value_passes(rollouts)
        ref_logps = self.token_logps(rollouts, reference=True) if self.needs_reference() else None
        passes_seconds = time.perf_counter() - start
        experience = self.compute_experience(rollouts, passes, ref_logps, samples)
        for i, rollout in enumerate(rollouts):
            n = len(rollout.completion_ids)
            for name in ("old_logps", "old_values", "advantages", "returns"):
                rollout.token_values[name] = experience[name][i, :n].tolist()
        metrics = self.experience_metrics(samples, experience, passes_seconds)
        self.update_kl_controller(experience)
        windows = self.mini_batch_windows(rollouts, state)
        windows[0][0]["rollout_metrics"] = metrics
        self.log_rollouts(state, samples, experience, len(windows))
        return windows

    def policy_and_value_passes(self, rollouts: list[Rollout]) -> list[dict[str, list[float]]]:
        """Per rollout, the current policy's log-probs and the critic's values of its completion
        tokens (one forward of the module, no grad)."""
        module, temperature = self._policy_module(), self.config.temperature

        def forward(input_ids, position_ids, scored):
            output = module(input_ids, position_ids, temperature=temperature, with_values=True, positions=scored)
            return {"logps": output.logps, "values": output.values}

        return self.completion_passes(rollouts, forward)

    def compute_experience(self, rollouts, passes, ref_logps, samples: Samples) -> dict[str, torch.Tensor]:
        """``(N, L)`` tensors of the rollout batch: ``mask``, ``old_logps``, ``old_values``,
        ``kl`` (per token, 0 without a reference), ``rewards`` (KL-penalised), raw
        ``gae_advantages``, ``advantages`` (whitened when asked), ``returns``; ``(N,)``
        ``scores`` (after the missing-EOS penalty) and ``sequence_kl``."""
        cfg = self.config
        width = max(len(r.completion_ids) for r in rollouts)
        mask = right_padded([r.completion_mask for r in rollouts], width)
        logps = right_padded([p["logps"] for p in passes], width)
        values = right_padded([p["values"] for p in passes], width)
        token_rewards = right_padded(samples.token_rewards, width)
        lengths = torch.tensor([len(r.completion_ids) for r in rollouts])
        if cfg.missing_eos_penalty:
            never_stopped = torch.tensor([float(c.truncated) for c in samples.completions])
            token_rewards[torch.arange(len(rollouts)), lengths - 1] -= cfg.missing_eos_penalty * never_stopped
        if ref_logps is None:
            kl = torch.zeros_like(logps)
        else:
            kl = kl_estimate(logps, right_padded(ref_logps, width), cfg.kl_estimator, mask=mask)
        rewards = token_rewards - self.kl_controller.value * kl
        if cfg.whiten_rewards:
            rewards = whiten_advantages(rewards, mask, shift_mean=False, all_reduce=self._sum_over_processes)
        gae_advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = gae_advantages
        if cfg.whiten_advantages:
            advantages = whiten_advantages(gae_advantages, mask, all_reduce=self._sum_over_processes)
        return {
            "mask": mask, "old_logps": logps, "old_values": values, "kl": kl, "rewards": rewards,
            "gae_advantages": gae_advantages, "advantages": advantages, "returns": returns,
            "scores": token_rewards.sum(dim=1), "sequence_kl": (kl * mask).sum(dim=1),
        }

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        acc = self.accelerator
        return acc.reduce(tensor.to(acc.device), reduction="sum").to(tensor.device)

    def update_kl_controller(self, experience: dict) -> None:
        kl = experience["sequence_kl"]
        totals = self._sum_over_processes(torch.stack([kl.sum(), torch.tensor(float(kl.numel()))]))
        self.kl_controller.update(float(totals[0] / totals[1]), int(totals[1]))

    def mini_batch_windows(self, rollouts: list[Rollout], state: TrainState) -> list[list[dict]]:
        """``ppo_epochs`` passes over ``rollouts``, each a fresh permutation cut into mini-batches;
        one window (list of micro-batches) per mini-batch."""
        cfg = self.config
        windows = []
        for epoch in range(cfg.ppo_epochs):
            generator = torch.Generator().manual_seed(shuffle_seed(cfg.seed, state.step, epoch))
            order = torch.randperm(len(rollouts), generator=generator).tolist()
            for chunk in split_micro_batches(order, cfg.mini_batch_size):
                windows.append(self.collate_window([rollouts[i] for i in chunk]))
        return windows

    # ------------------------------------------------------------------ the update

    def count_units(self, batch) -> torch.Tensor:
        return batch["completion_mask"].sum()

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        cfg = self.config
        out = module(
            batch["input_ids"], batch["position_ids"], temperature=cfg.temperature, with_stats=True, with_values=True,
            positions=batch.get("completion_positions"),
        )
        index, device = batch["completion_index"], out.logps.device
        mask = batch["completion_mask"].to(device)
        logps, values = completion_view(out.logps, index), completion_view(out.values, index)
        old_logps = batch["old_logps"].to(device)
        policy_loss, policy = clipped_policy_loss(logps, old_logps, batch["advantages"].to(device), mask, clip_low=cfg.cliprange)
        value_loss, value_clipped = clipped_value_loss(values, batch["old_values"].to(device), batch["returns"].to(device), mask, cfg.cliprange_value)
        loss = aggregate("token_mean", policy_loss + cfg.vf_coef * value_loss, mask)
        tokens = mask.sum()
        approxkl = (kl_estimate(logps.detach(), old_logps, "k2", mask=mask) * mask).sum()
        self._approxkl += torch.stack([approxkl.detach().float().cpu(), tokens.detach().float().cpu()])
        metrics = {
            "loss": Metric.mean(loss.total, loss.count),
            "loss/policy": Metric.mean((policy_loss * mask).sum(), tokens),
            "loss/value": Metric.mean((value_loss * mask).sum(), tokens),
            "policy/approxkl": Metric.mean(approxkl, tokens),
            "policy/clipfrac": Metric.mean(((policy.clipped_low | policy.clipped_high).float() * mask).sum(), tokens),
            "policy/ratio": Metric.mean((policy.ratio * mask).sum(), tokens),
            "policy/entropy": Metric.mean((completion_view(out.entropy, index) * mask).sum(), tokens),
            "value/clipfrac": Metric.mean((value_clipped.float() * mask).sum(), tokens),
        }
        # the rollout batch's metrics, once: later steps over the same batch find them gone
        metrics.update(batch.pop("rollout_metrics", {}))
        return loss.total, metrics

    def _optimizer_step(self, module, optimizer, scheduler, window, state, metrics) -> None:
        self._approxkl = torch.zeros(2)
        super()._optimizer_step(module, optimizer, scheduler, window, state, metrics)
        target = self.config.target_kl
        if target is None:
            return
        totals = self._sum_over_processes(self._approxkl)
        stopped = bool(totals[0] / totals[1].clamp(min=1) > target)
        metrics.update({"policy/early_stop": Metric.mean(float(stopped))})
        if stopped:
            metrics.update({"policy/skipped_steps": Metric.mean(self.buffer.clear())})

    # ------------------------------------------------------------------ reporting

    def experience_metrics(self, samples: Samples, experience: dict, passes_seconds: float) -> dict[str, Metric]:
        """Metrics of one rollout batch (carried by its first micro-batch, counted once)."""
        mask, n = experience["mask"], len(samples.completions)
        tokens = mask.sum()
        non_score = -self.kl_controller.value * experience["sequence_kl"]
        scores = experience["scores"]
        metrics = {
            "objective/scores": Metric.mean(scores.sum(), n),
            "objective/kl": Metric.mean(experience["sequence_kl"].sum(), n),
            "objective/non_score_reward": Metric.mean(non_score.sum(), n),
            "objective/rlhf_reward": Metric.mean((scores + non_score).sum(), n),
            "objective/entropy": Metric.mean((-experience["old_logps"] * mask).sum(), n),
            "objective/kl_coef": Metric.mean(self.kl_controller.value),
            "returns/mean": Metric.mean((experience["returns"] * mask).sum(), tokens),
            "returns/var": Metric.mean(_masked_var(experience["returns"], mask)),
            "advantages/mean": Metric.mean((experience["gae_advantages"] * mask).sum(), tokens),
            "advantages/var": Metric.mean(_masked_var(experience["gae_advantages"], mask)),
            "value/mean": Metric.mean((experience["old_values"] * mask).sum(), tokens),
            "time/generation": Metric.mean(samples.generation_seconds),
            "time/rewards": Metric.mean(samples.reward_seconds),
            "time/passes": Metric.mean(passes_seconds),
        }
        explained = explained_variance(experience["old_values"], experience["returns"], mask)
        if torch.isfinite(explained):
            metrics["value/explained_variance"] = Metric.mean(explained)
        if samples.generation_seconds > 0:
            generated = sum(len(c.token_ids) for c in samples.completions)
            metrics["generation/tokens_per_second"] = Metric.mean(generated, samples.generation_seconds)
        result = samples.reward_result
        if result is not None:
            metrics.update(reward_metrics(result.total, result.per_function, result.names))
        metrics.update(completion_metrics(samples.completions))
        return metrics

    def log_rollouts(self, state: TrainState, samples: Samples, experience: dict, steps: int) -> None:
        """The completion log, when one of the steps this rollout batch serves is due."""
        due = self.completion_log_step(state, steps)
        if due is None:
            return
        result = samples.reward_result
        rows = []
        for i, (item, completion) in enumerate(zip(samples.items, samples.completions)):
            row = {"prompt": item["prompt"], "completion": completion.text, "score": float(experience["scores"][i])}
            if result is not None:
                row.update({name: float(result.per_function[i, f]) for f, name in enumerate(result.names)})
            row["kl"] = float(experience["sequence_kl"][i])
            row["value"] = float(experience["old_values"][i, 0])
            row["return"] = float(experience["returns"][i, 0])
            rows.append(row)
        self.completion_log.log(due, rows)


def _masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of ``values`` over the mask (a metric of this process's batch)."""
    return masked_mean((values - masked_mean(values, mask)).square(), mask)


__all__ = ["PPOConfig", "PPOTrainer", "Samples", "shuffle_seed"]
