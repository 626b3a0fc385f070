"""The one rollout path of the online algorithms (GRPO, PPO) and everything they share
(docs/design.md, "Online RL"): when the experience buffer is used up, :meth:`OnlineTrainer.next_window`
samples and scores the next prompts (:meth:`OnlineTrainer.sample`), the algorithm makes experience
of them (:meth:`OnlineTrainer.make_experience`), and :meth:`OnlineTrainer.prepare_experience`
schedules the optimizer steps it serves and keeps its metrics, which join the loop's at the next
step: beside the batches, never inside them.

Batch sizes follow TRL: ``per_device_train_batch_size`` counts *completions* per micro-batch. A
prompt's completions never straddle processes, so group statistics are exact on several.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from posttrain.algorithms.experience import (
    Experience,
    ExperienceBuffer,
    MicroBatch,
    Samples,
    completion_view,
    micro_batch,
    split_micro_batches,
)
from posttrain.algorithms.reference import ReferenceConfig, ReferencePolicy, load_policy
from posttrain.algorithms.tool_use import EpisodeBatch, ToolUse
from posttrain.algorithms.update_layout import UPDATE_LAYOUTS, LayoutChooser, measured_layout
from posttrain.config import option
from posttrain.data.prompt_only import prepare_prompts
from posttrain.data.prompts import end_of_turn_ids
from posttrain.errors import ConfigError
from posttrain.losses.policy import policy_loss
from posttrain.losses.reduce import aggregate
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import set_chat_template
from posttrain.models.packing_check import check_packing_isolation
from posttrain.rollout import HFGenerationEngine, RewardFunctions, SamplingOptions
from posttrain.rollout.decoding import GENERATION_PATHS, plan_generation
from posttrain.rollout.reward_spec import check_reward_packages
from posttrain.train.loop import BatchSource, Trainer, TrainingRun
from posttrain.train.metrics import Metric, MetricAccumulator
from posttrain.train.state import TrainState


@dataclass
class OnlineConfig(ReferenceConfig):
    """Options of every online trainer: prompts, sampling, rewards, experience reuse."""

    # Whether each pass takes the mini-batches in a fresh order (PPO) or as sampled (GRPO).
    shuffle_mini_batches: ClassVar[bool] = False
    # How per-token losses are reduced (posttrain.losses.reduce.AGGREGATIONS).
    aggregation: ClassVar[str] = "token_mean"

    num_generations: int = option(8, "Completions sampled per prompt (a GRPO group).", range="[1, inf)")
    max_prompt_length: int | None = option(512, "Prompts longer than this many tokens lose tokens from their start (counted); None keeps them whole.")
    max_completion_length: int = option(256, "Most tokens generated per completion.", range="[1, inf)")
    temperature: float = option(1.0, "Sampling temperature; log-probs for the update are computed at the same temperature.")
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest set of tokens with this much probability.")
    top_k: int = option(0, "Sample among the k most likely tokens (0: no limit).")
    min_p: float | None = option(None, "Drop tokens less likely than min_p times the most likely one.")
    repetition_penalty: float = option(1.0, "Penalty on repeated tokens (1.0: none).")
    stop_strings: list = option([], "Stop a completion once it ends with one of these strings.")
    stop_token_ids: list = option([], "Token ids that end a completion besides EOS.")
    generation_kwargs: dict = option({}, "Any other keyword for transformers' generate().")
    generation_batch_size: int = option(64, "Sequences (prompts x generations) per generate() call, and per log-prob pass without grad: memory, not semantics.")
    generation_path: str = option("auto", "How the default engine runs transformers' generation: auto (static: measured fastest on CPU; GPUs not measured yet), dynamic, static (a static KV cache written in place, attention over its filled slots), static_compiled (transformers' StaticCache, every slot read, and a compiled decoding step), continuous_batching (paged attention).", choices=GENERATION_PATHS)
    share_prompt_prefill: bool = option(True, "Run each prompt through the model once for all its num_generations completions (same completions, less prefill).")
    system_prompt: str | None = option(None, "Turn string prompts into conversations: this system message, then the prompt as the user's message (rendered by the chat template).")
    chat_template: str | None = option(None, "A Jinja chat template (or a path to one) replacing the tokenizer's.")
    chat_template_kwargs: dict = option({}, "Extra variables for the chat template.")
    reward_funcs: list = option([], "Reward functions for the CLI: built-in names with options ({name: exact_answer, column: answer}) or 'module:function' paths. Python callers pass reward_funcs=[callable, ...].")
    reward_weights: list | None = option(None, "One weight per reward function (default 1 each); the reward is their weighted sum.")
    mask_truncated_completions: bool = option(False, "Give no loss to completions cut at max_completion_length (their reward judged an unfinished answer).")
    num_iterations: int = option(1, "Optimizer steps per generation batch (mu). With 1, no extra log-prob pass is run: the ratio is 1 by construction.", range="[1, inf)")
    packing: bool = option(True, "Allow packing prompt+completion sequences into rows for the update (a start-up probe checks attention never crosses sequences); False: padded rows only.")
    update_layout: str = option("auto", "How the update lays out sequences: auto (per micro-batch, the layout that applies with the fewest FLOPs counted from its shape), packed, padded, prompt_groups (each prompt run once for all its completions), measure (the fastest on the first micro-batch, timed).", choices=UPDATE_LAYOUTS)
    tools: list = option([], "Tools the model may call, for the CLI: 'module:function' or 'path/to/file.py:function' paths (type hints and a docstring describe each). Python callers pass tools=[callable, ...]. With tools, each rollout is a multi-turn episode.")
    environment_factory: Any = option(None, "For the CLI: 'module:Class' or 'path/to/file.py:Class', built once per episode; its public methods are that episode's tools, it can end the episode (done = True) and reward functions receive it (environments). Python callers pass environment_factory=Class.")
    max_tool_calling_iterations: int = option(5, "Rounds of tool calls an episode may run; the turn after the last round is its answer (calls it still makes are not run, counted in tools/hit_limit_ratio).", range="[1, inf)")
    tool_timeout: float | None = option(None, "Seconds a tool call may take before it becomes a 'timeout' error message; None: no limit.", range="(0, inf)")

    def __post_init__(self):
        super().__post_init__()
        if self.reward_funcs:  # a built-in reward whose package is missing: said now, before any model loads
            check_reward_packages(self.reward_funcs)
        if self.rollout_size % self.num_generations:
            raise ConfigError(
                f"{self.rollout_size} completions per generation batch must be a multiple of num_generations = {self.num_generations}, "
                "so every prompt's group stays whole on one process. Fix: change num_generations or the completions per batch "
                "(per_device_train_batch_size x gradient_accumulation_steps; PPO: batch_size)"
            )

    @property
    def mini_batch_size(self) -> int:
        """Completions per optimizer step on each process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def rollout_size(self) -> int:
        """Completions per generation batch on each process (GRPO: one optimizer step's)."""
        return self.mini_batch_size

    @property
    def prompts_per_step(self) -> int:
        """Prompts per generation batch on each process."""
        return self.rollout_size // self.num_generations

    @property
    def epochs_per_rollout(self) -> int:
        """Passes over each generation batch (GRPO: ``num_iterations``)."""
        return self.num_iterations


class Prepared(NamedTuple):
    """An algorithm's ``experience`` of a generation batch, its own ``metrics`` and
    ``log_columns`` (``{name: N floats}`` the completion log shows beside each completion)."""

    experience: Experience
    metrics: dict[str, Metric]
    log_columns: dict[str, list[float]]


def shuffle_seed(seed: int, step: int, epoch: int) -> int:
    """The seed of the mini-batch order of ``epoch`` of the generation batch made at ``step``."""
    return ((seed * 1_000_003 + step) * 1_009 + epoch) % (2**63 - 1)


class OnlineTrainer(Trainer):
    """An online algorithm defines :meth:`make_experience` and :meth:`compute_loss` (with
    :meth:`policy_forward`, :meth:`policy_gradient`, :meth:`reduce`), names its policy loss and
    says whether it needs a reference. ``rollout_engine``: any :class:`~posttrain.rollout.RolloutEngine`
    (default: transformers' ``generate`` over the live policy)."""

    config_class = OnlineConfig
    # the loss of posttrain.losses.policy.POLICY_LOSSES the update uses
    policy_loss_name: ClassVar[str] = "clipped"
    # why the update cannot take the prompt_groups layout (None: it can): its loss reads more than
    # the policy's per-token log-probs (PPO's values from the trunk, distillation's teacher)
    prompt_groups_unsupported: ClassVar[str | None] = None
    reference: ReferencePolicy | None = None

    def __init__(self, model=None, config=None, *, reward_funcs=None, rollout_engine=None, tools=None, environment_factory=None, **kwargs):
        self._engine = rollout_engine
        self._tool_arguments = (tools, environment_factory)
        self.tool_use: ToolUse | None = None
        self._engine_step: int | None = None  # the optimizer step whose weights the engine holds
        self._generation = [0.0, 0]  # seconds and tokens of generation since the last experience
        self._pending_metrics: dict | None = None
        super().__init__(model, config, **kwargs)
        funcs = reward_funcs if reward_funcs is not None else self.config.reward_funcs
        self.rewards = RewardFunctions(funcs, self.config.reward_weights) if funcs else None
        if self.rewards is not None:
            self.rewards.check_columns(self._columns, environments=self.tool_use is not None and self.tool_use.has_environments)
        self.buffer = ExperienceBuffer()
        self.layouts = LayoutChooser(self)

    # ------------------------------------------------------------------ what an algorithm defines

    def needs_reference(self) -> bool:
        """Whether the objective compares the policy with a reference (a KL term)."""
        return False

    def make_experience(self, samples: Samples, state: TrainState) -> Prepared:
        """Advantages, and the log-probs and values the loss needs (:meth:`scoring_pass`)."""
        raise TypeError(f"{type(self).__name__} must define make_experience")

    def policy_loss_options(self) -> dict:
        """Keywords of the policy loss (clip ranges, ratio level) from the config."""
        return {}

    # ------------------------------------------------------------------ data and model

    def build_batch_source(self, rows, split: str) -> BatchSource | None:
        cfg = self.config
        if rows is None:  # driven by the caller (PPO's step): no prompt data
            self._columns, self._prompt_capacity, self._conversational = [], 0, False
            return None
        set_chat_template(self.tokenizer, cfg.chat_template)
        if split == "train":  # the tools' schemas are rendered into the prompts
            self.tool_use = ToolUse.from_config(cfg, self.tokenizer, *self._tool_arguments)
        prepared = prepare_prompts(
            rows, self.tokenizer, system_prompt=cfg.system_prompt, chat_template_kwargs=cfg.chat_template_kwargs,
            max_prompt_length=cfg.max_prompt_length, tools=self.tool_use.schemas if self.tool_use is not None else None,
        )
        self.reporter.print(f"[bold]{split} data[/] ({prepared.data_format}):")
        for line in prepared.lines():
            self.reporter.print(f"  {line}")
        if split == "train":
            self._columns = prepared.columns
            self._prompt_capacity = max(len(item["prompt_ids"]) for item in prepared.items)
            self._conversational = prepared.data_format.conversational
        return BatchSource(prepared.items, [len(item["prompt_ids"]) for item in prepared.items], list)

    def train_loader_batch_size(self) -> int:
        return self.config.prompts_per_step

    def total_steps(self, micro_batches_per_epoch: int) -> int:
        cfg = self.config
        if cfg.max_steps > 0 or self.train_source is None:  # driven step by step: as long as the caller goes on
            return cfg.max_steps
        steps_per_generation = cfg.epochs_per_rollout * (cfg.rollout_size // cfg.mini_batch_size)
        return max(1, math.ceil(cfg.num_epochs * micro_batches_per_epoch)) * steps_per_generation

    def checkpoint_objects(self) -> list:
        return [self.buffer]

    def log_sample_completions(self, step: int) -> None:
        """Nothing extra: online trainers log the completions they train on (:meth:`prepare_experience`)."""

    def load_model(self, model):
        policy, self.reference = load_policy(model, self.config, self.accelerator, with_reference=self.needs_reference())
        return policy

    def check_packing(self, model) -> None:
        """The start-up probe that packed rows keep their sequences apart."""
        if self.config.packing:
            check_packing_isolation(model, batch_rows=2, device=self.accelerator.device)

    def wrap_model(self, model) -> torch.nn.Module:
        self.check_packing(model)
        return TokenLogProbs.for_config(model, self.config)

    # ------------------------------------------------------------------ the rollout path

    @property
    def engine(self):
        """The generation engine (the default one is built at first use)."""
        if self._engine is None:
            cfg = self.config
            try:  # a path asked for by name that cannot run here is a config error, said before the first rollout
                plan = plan_generation(cfg.generation_path, self.unwrapped_model(), self.accelerator.device, self.sampling_options(), cfg.share_prompt_prefill)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            self.reporter.print_verbatim(plan.describe() + (f" ({cfg.generation_path})" if cfg.generation_path == "auto" else ""))
            self._engine = HFGenerationEngine(
                self.model, self.tokenizer, batch_size=cfg.generation_batch_size, accelerator=self.accelerator,
                weights=self.gathered_weights, path=cfg.generation_path, share_prompt_prefill=cfg.share_prompt_prefill,
                notify=self.reporter.print_verbatim,
            )
        return self._engine

    def sample_completions(self, prompt_ids: list[list[int]], options: SamplingOptions, num_generations: int) -> list:
        """Completions from the current policy. An engine that keeps its own copy of the weights
        (``holds_weights``, as a vLLM engine does) is given them first whenever an optimizer step
        changed them (:meth:`generation_weights`)."""
        engine, step = self.engine, self.state.step
        if getattr(engine, "holds_weights", False) and self._engine_step != step:
            with self.gathered_weights() as whole:  # every process together, when sharded
                engine.update_weights(whole if whole is not None else self.generation_weights())
            self._engine_step = step
        start = time.perf_counter()
        completions = engine.generate(prompt_ids, options, num_generations)
        self._generation[0] += time.perf_counter() - start
        self._generation[1] += sum(len(c.token_ids) for c in completions)
        return completions

    def generation_weights(self) -> torch.nn.Module:
        """The policy an engine with its own copy loads, when the run is not sharded (a sharded
        run gives it the whole weights gathered by :meth:`gathered_weights`)."""
        return self.unwrapped_model()

    def sampling_options(self, greedy: bool = False) -> SamplingOptions:
        cfg = self.config
        return SamplingOptions(
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            min_p=cfg.min_p,
            repetition_penalty=cfg.repetition_penalty,
            do_sample=not greedy,
            stop_strings=tuple(cfg.stop_strings),
            # a reply to a message list ends at the template's end-of-turn token, EOS or not
            stop_token_ids=tuple(cfg.stop_token_ids) + tuple(end_of_turn_ids(self.tokenizer) if self._conversational else ()),
            generation_kwargs=dict(cfg.generation_kwargs),
            chat_template_kwargs=dict(cfg.chat_template_kwargs),
        )

    def rollout(self, items: list[dict], options: SamplingOptions, num_generations: int) -> tuple[list, EpisodeBatch | None]:
        """``(completions, episodes)``: single replies (``episodes`` None) or, with tools, multi-turn
        episodes (:mod:`posttrain.algorithms.tool_use`; each round through sample_completions)."""
        if self.tool_use is None:
            return self.sample_completions([item["prompt_ids"] for item in items], options, num_generations), None
        episodes = self.tool_use.rollout(self.sample_completions, self.tokenizer, items, options, num_generations)
        return episodes.completions, episodes

    def sample(self, stream: Iterator) -> Samples:
        """The next prompts, ``num_generations`` completions of each, scored (the reward
        functions' total on each completion's last sampled token)."""
        items, size = next(stream), self.config.num_generations
        completions, episodes = self.rollout(items, self.sampling_options(), size)
        start = time.perf_counter()
        result = self.score(items, completions, size, episodes)
        rewards = [[score if i == c.last_sampled else 0.0 for i in range(len(c.token_ids))] for c, score in zip(completions, result.total.tolist())]
        repeated = [item for item in items for _ in range(size)]
        stats = {"time/rewards": time.perf_counter() - start, **(episodes.metrics if episodes is not None else {})}
        return Samples(repeated, completions, rewards, result, size, stats)

    def score(self, items: list[dict], completions: list, group_size: int, episodes: EpisodeBatch | None = None):
        """Rewards of ``completions`` (``group_size`` per item, contiguous); episodes by their messages and environments."""
        if self.rewards is None:
            raise ConfigError("no reward functions: pass reward_funcs=[...] (or set reward_funcs in the config)")
        repeated = [item for item in items for _ in range(group_size)]
        columns = {name: [item["columns"][name] for item in repeated] for name in self._columns}
        return self.rewards(
            [item["prompt"] for item in repeated],
            [completion.text for completion in completions] if episodes is None else episodes.messages,
            [list(completion.token_ids) for completion in completions],
            columns,
            environments=episodes.environments if episodes is not None else None,
        )

    def next_window(self, module, stream: Iterator, state: TrainState) -> list[MicroBatch]:
        if not self.buffer.steps:
            self.prepare_experience(self.sample(stream), state)
        if self.config.update_layout == "measure" and self.buffer.layout is None:  # once per run, kept in checkpoints
            self.buffer.layout = measured_layout(self, module, self.buffer.experience, self.buffer.peek(), self.layouts.applicable())
        return self.take_window()

    def prepare_experience(self, samples: Samples, state: TrainState) -> None:
        """Make experience of ``samples``, schedule the steps it serves, keep its metrics for the
        next step, log its completions when one of those steps is due."""
        start = time.perf_counter()
        prepared = self.make_experience(samples, state)
        experience = prepared.experience
        if experience.advantages is not None:  # none where no loss goes: tokens inserted between turns, padding
            experience.advantages = experience.advantages * experience.completion_mask
        seconds = time.perf_counter() - start
        steps = self.mini_batch_schedule(len(prepared.experience), state)
        self.buffer.fill(prepared.experience, steps)
        self._pending_metrics = {**self.rollout_metrics(samples), **prepared.metrics, "time/experience": Metric.mean(seconds)}
        self.log_completions(state, samples, prepared.log_columns, len(steps))

    def mini_batch_schedule(self, size: int, state: TrainState) -> list[list[int]]:
        """The rows of each optimizer step a generation batch of ``size`` serves:
        ``epochs_per_rollout`` passes of mini-batches, shuffled per pass (when the config says so)
        from ``(seed, step, epoch)``, never the global RNG, so a resumed run replays it."""
        cfg, steps = self.config, []
        for epoch in range(cfg.epochs_per_rollout):
            order = list(range(size))
            if cfg.shuffle_mini_batches:
                generator = torch.Generator().manual_seed(shuffle_seed(cfg.seed, state.step, epoch))
                order = torch.randperm(size, generator=generator).tolist()
            steps += split_micro_batches(order, cfg.mini_batch_size)
        return steps

    def take_window(self) -> list[MicroBatch] | None:
        """The micro-batches of the next optimizer step the buffer serves, or None."""
        rows = self.buffer.take()
        return None if rows is None else self.micro_batches(self.buffer.experience, rows)

    def micro_batches(self, experience: Experience, rows: list[int], layout: str | None = None) -> list[MicroBatch]:
        """``rows`` in micro-batches of ``per_device_train_batch_size``, each laid out as
        ``layout`` or, by default, as the config's ``update_layout`` chooses for it
        (:mod:`~posttrain.algorithms.update_layout`)."""
        batches, capacity = [], self._row_capacity()
        for chunk in split_micro_batches(rows, self.config.per_device_train_batch_size):
            chosen = layout or self.layouts.layout_of(experience, chunk, capacity)
            batches.append(micro_batch(experience, chunk, self.tokenizer.pad_token_id, capacity if chosen != "padded" else 0, chosen == "prompt_groups"))
        return batches

    def _row_capacity(self) -> int:
        cfg = self.config
        return self._prompt_capacity + cfg.max_completion_length if cfg.packing else 0

    # ------------------------------------------------------------------ passes without grad

    @torch.no_grad()
    def scoring_pass(self, experience: Experience, forward) -> dict[str, torch.Tensor]:
        """Per-token values of every completion token, ``{name: (N, L)}`` (0 after each
        completion's end): ``forward(input_ids, position_ids, completion_positions)`` maps packed
        ``(R, T)`` inputs to ``{name: (R, T)}`` aligned with the input tokens. Runs in chunks of
        ``generation_batch_size`` sequences (the batch the rollout produced)."""
        device, out = self.accelerator.device, {}
        lengths = torch.tensor([len(c.token_ids) for c in experience.samples.completions])
        for chunk in split_micro_batches(range(len(experience)), self.config.generation_batch_size):
            batch = micro_batch(experience, chunk, self.tokenizer.pad_token_id, self._row_capacity())
            scored = None if batch.completion_positions is None else batch.completion_positions.to(device)
            values = forward(batch.input_ids.to(device), batch.position_ids.to(device), scored)
            inside = torch.arange(batch.completion_index.shape[1]) < lengths[chunk].unsqueeze(1)
            for name, value in values.items():
                view = completion_view(value, batch.completion_index).float().cpu()
                out.setdefault(name, torch.zeros_like(experience.completion_mask))[chunk, : view.shape[1]] = torch.where(inside, view, 0.0)
        return out

    def policy_logps(self, experience: Experience, reference: bool = False) -> torch.Tensor:
        """``(N, L)`` log-probs of the completions under the current policy (or the reference),
        at the sampling temperature."""
        module, temperature = self._policy_module(), self.config.temperature

        def forward(ids, positions, scored):
            if reference:
                return {"logps": self.reference.token_logps(module, ids, positions, temperature=temperature, positions=scored)}
            return {"logps": module(ids, positions, temperature=temperature, positions=scored).logps}

        return self.scoring_pass(experience, forward)["logps"]

    def _policy_module(self) -> TokenLogProbs:
        return self.accelerator.unwrap_model(self.module)

    # ------------------------------------------------------------------ the update

    def count_units(self, batch: MicroBatch) -> torch.Tensor:
        mask = batch.completion_mask
        return aggregate(self.config.aggregation, torch.zeros_like(mask), mask, max_len=self.config.max_completion_length).count

    def count_tokens(self, batch: MicroBatch) -> int:
        return batch.num_tokens

    def policy_forward(self, module, batch: MicroBatch, with_values: bool = False):
        """``(logps, entropy, values)``, each ``(S, L)`` on the batch's completion tokens, with
        grad (``values`` None unless asked for)."""
        if batch.groups is not None and not with_values:  # (S, L) directly, each prompt run once
            out = module(groups=batch.groups.to(self.accelerator.device), temperature=self.config.temperature, with_stats=True)
            return out.logps, out.entropy, None
        extra = {"with_values": True} if with_values else {}
        out = module(batch.input_ids, batch.position_ids, temperature=self.config.temperature, with_stats=True, positions=batch.completion_positions, **extra)
        index = batch.completion_index
        values = completion_view(out.values, index) if with_values else None
        return completion_view(out.logps, index), completion_view(out.entropy, index), values

    def policy_gradient(self, logps: torch.Tensor, entropy: torch.Tensor, batch: MicroBatch):
        """``(per-token loss (S, L), stats, metrics)``: the algorithm's policy loss against the
        sampling policy (the current one, detached, when the experience has no old log-probs),
        with the entropy and clip metrics of every online trainer."""
        device = logps.device
        mask = batch.completion_mask.to(device)
        old = batch.old_logps.to(device) if batch.old_logps is not None else logps.detach()
        per_token, stats = policy_loss(self.policy_loss_name, logps, old, batch.advantages.to(device), mask, **self.policy_loss_options())
        tokens = mask.sum()
        metrics = {
            "entropy": Metric.mean((entropy * mask).sum(), tokens),
            "clip_ratio/low_mean": Metric.mean((stats.clipped_low.float() * mask).sum(), tokens),
            "clip_ratio/high_mean": Metric.mean((stats.clipped_high.float() * mask).sum(), tokens),
            "clip_ratio/region_mean": Metric.mean(((stats.clipped_low | stats.clipped_high).float() * mask).sum(), tokens),
        }
        return per_token, stats, metrics

    def reduce(self, per_token: torch.Tensor, batch: MicroBatch, metrics: dict[str, Metric]) -> tuple[torch.Tensor, dict[str, Metric]]:
        """The batch's summed loss by the config's aggregation, ``loss`` added to ``metrics``."""
        loss = aggregate(self.config.aggregation, per_token, batch.completion_mask.to(per_token.device), max_len=self.config.max_completion_length)
        metrics["loss"] = Metric.mean(loss.total, loss.count)
        return loss.total, metrics

    def optimizer_step(self, run: TrainingRun, window: list, metrics=None) -> None:
        metrics = run.metrics if metrics is None else metrics
        start = time.perf_counter()
        super().optimizer_step(run, window, metrics)
        metrics.update({"time/training": Metric.mean(time.perf_counter() - start)})
        if self._pending_metrics is not None:  # the generation batch's metrics, once
            metrics.update(self._pending_metrics)
            self._pending_metrics = None

    # ------------------------------------------------------------------ metrics and logs

    def rollout_metrics(self, samples: Samples) -> dict[str, Metric]:
        """Rewards, completion lengths, the rollout's own counts and times, and generation speed."""
        lengths = torch.tensor([float(len(c.token_ids)) for c in samples.completions])
        truncated = torch.tensor([float(c.truncated) for c in samples.completions])
        n = len(samples.completions)
        metrics = {
            "completions/mean_length": Metric.mean(lengths.sum(), n),
            "completions/min_length": Metric.min(lengths.min()),
            "completions/max_length": Metric.max(lengths.max()),
            "completions/clipped_ratio": Metric.mean(truncated.sum(), n),
        }
        if samples.details is not None:
            metrics |= reward_metrics(samples.details.total, samples.details.per_function, samples.details.names)
        seconds, tokens = self._generation
        self._generation = [0.0, 0]
        metrics["time/generation"] = Metric.mean(seconds)
        if seconds > 0:
            metrics["generation/tokens_per_second"] = Metric.mean(tokens, seconds)
        metrics |= {name: Metric.mean(value) for name, value in samples.stats.items()}
        return metrics

    def log_completions(self, state: TrainState, samples: Samples, columns: dict[str, list[float]], steps: int) -> None:
        """Prompt, completion, reward, each reward function and ``columns`` of every sample, when
        the completion log is due at one of the next ``steps`` steps."""
        due = next((s for s in range(state.step + 1, state.step + 1 + steps) if self.completion_log.due(s)), None)
        if due is None:
            return
        details, scores, rows = samples.details, samples.scores(), []
        for i, (item, completion) in enumerate(zip(samples.items, samples.completions)):
            row = {"prompt": item["prompt"], "completion": completion.text, "reward": float(scores[i])}
            if details is not None:
                row.update({name: float(details.per_function[i, f]) for f, name in enumerate(details.names)})
            row.update({name: float(values[i]) for name, values in columns.items()})
            rows.append(row)
        self.completion_log.log(due, rows)

    @torch.no_grad()
    def compute_eval_metrics(self) -> dict[str, float]:
        """Greedy completions of the evaluation prompts, scored by the reward functions:
        ``eval/reward`` and ``eval/rewards/<name>/mean``."""
        if self.eval_source is None or self.rewards is None:
            return {}
        items, counted = list(self.eval_source.dataset), list(self._generation)
        with self.accelerator.split_between_processes(items) as mine:
            completions, episodes = self.rollout(mine, self.sampling_options(greedy=True), 1)
            result = self.score(mine, completions, 1, episodes)
            metrics = reward_metrics(result.total, result.per_function, result.names)
        self._generation = counted  # evaluation is not part of the next generation batch
        accumulator = MetricAccumulator()
        accumulator.update(metrics)
        return {f"eval/{name}": value for name, value in accumulator.compute(self.accelerator).items()}


def reward_metrics(total: torch.Tensor, per_function: torch.Tensor, names: list[str]) -> dict[str, Metric]:
    """``reward`` (the weighted total) and each function's ``rewards/<name>/mean`` over the rows
    it applies to, as sums and counts (exact over micro-batches, steps and processes), plus the
    std of each within this batch (averaged over the steps of a logging interval).

    ``total`` ``(N,)``; ``per_function`` ``(N, F)``, NaN where a function does not apply."""
    metrics = {"reward": Metric.mean(total.sum(), total.numel()), "reward_std": Metric.mean(total.std(correction=0))}
    for column, name in enumerate(names):
        values = per_function[:, column]
        present = values[~torch.isnan(values)]
        if present.numel():
            metrics[f"rewards/{name}/mean"] = Metric.mean(present.sum(), present.numel())
            metrics[f"rewards/{name}/std"] = Metric.mean(present.std(correction=0))
    return metrics

