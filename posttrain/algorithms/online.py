"""What every online algorithm (GRPO, PPO) shares: prompt data, generation from the current
policy, reward functions, the experience buffer, the completion log and the time split.

The one loop (:mod:`posttrain.train.loop`) asks :meth:`OnlineTrainer.next_window` for the
micro-batches of each optimizer step. Here that means: take the next batch of prompts from the
data stream, generate from the current policy, score, let the algorithm turn the samples into
:class:`~posttrain.algorithms.experience.Rollout` objects (:meth:`make_rollouts`), and cut them
into ``gradient_accumulation_steps`` micro-batches. One generation batch serves
``num_iterations`` optimizer steps; it is kept in an :class:`ExperienceBuffer` that checkpoints
save, so a run resumed between two of those steps continues on the same samples.

Batch sizes follow TRL: ``per_device_train_batch_size`` counts *completions* per micro-batch, so
one optimizer step trains on ``per_device_train_batch_size * gradient_accumulation_steps``
completions per process, i.e. that many divided by ``num_generations`` prompts. A prompt's
completions never straddle processes, so group statistics are exact under several processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.algorithms.experience import Rollout, collate_rollouts, completion_view, split_micro_batches
from posttrain.algorithms.reference import ReferenceConfig, ReferenceTrainer
from posttrain.config import option
from posttrain.errors import ConfigError
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import set_chat_template
from posttrain.models.packing_check import check_packing_isolation
from posttrain.train.loop import BatchSource
from posttrain.train.metrics import Metric
from posttrain.train.state import TrainState

# Columns of a prompt row that are ours, not the user's: never passed to reward functions.


@dataclass
class OnlineConfig(ReferenceConfig):
    """Options of every online trainer: prompts, sampling, rewards, experience reuse."""

    num_generations: int = option(8, "Completions sampled per prompt (a GRPO group).")
    max_prompt_length: int | None = option(512, "Prompts longer than this many tokens lose tokens from their start (counted); None keeps them whole.")
    max_completion_length: int = option(256, "Most tokens generated per completion.")
    temperature: float = option(1.0, "Sampling temperature; log-probs for the update are computed at the same temperature.")
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest set of tokens with this much probability.")
    top_k: int = option(0, "Sample among the k most likely tokens (0: no limit).")
    min_p: float | None = option(None, "Drop tokens less likely than min_p times the most likely one.")
    repetition_penalty: float = option(1.0, "Penalty on repeated tokens (1.0: none).")
    stop_strings: list = option([], "Stop a completion once it ends with one of these strings.")
    stop_token_ids: list = option([], "Token ids that end a completion besides EOS.")
    generation_kwargs: dict = option({}, "Any other keyword for transformers' generate().")
    generation_batch_size: int = option(64, "Sequences (prompts x generations) per generate() call: memory, not semantics.")
    system_prompt: str | None = option(None, "Turn string prompts into conversations: this system message, then the prompt as the user's message (rendered by the chat template).")
    chat_template: str | None = option(None, "A Jinja chat template (or a path to one) replacing the tokenizer's.")
    chat_template_kwargs: dict = option({}, "Extra variables for the chat template.")
    reward_funcs: list = option([], "Reward functions for the CLI: built-in names with options ({name: exact_answer, column: answer}) or 'module:function' paths. Python callers pass reward_funcs=[callable, ...].")
    reward_weights: list | None = option(None, "One weight per reward function (default 1 each); the reward is their weighted sum.")
    mask_truncated_completions: bool = option(False, "Give no loss to completions cut at max_completion_length (their reward judged an unfinished answer).")
    num_iterations: int = option(1, "Optimizer steps per generation batch (mu). With 1, no extra log-prob pass is run: the ratio is 1 by construction.")
    packing: bool = option(True, "Pack prompt+completion sequences into rows for the update (no padding waste; a start-up probe checks attention never crosses sequences).")

    def __post_init__(self):
        super().__post_init__()
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.num_generations < 1 or per_step % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size x gradient_accumulation_steps = {per_step} completions per step must be a "
                f"multiple of num_generations = {self.num_generations}, so every prompt's group stays whole on one "
                "process. Fix: change one of the three."
            )
        if self.max_completion_length < 1 or self.num_iterations < 1:
            raise ConfigError("max_completion_length and num_iterations must be >= 1")
        if self.reference_mode == "precomputed":
            raise ConfigError("reference_mode 'precomputed' needs fixed completions; online algorithms sample new ones. Use 'model' or 'adapters_disabled'.")

    @property
    def prompts_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations


class ExperienceBuffer:
    """The windows (micro-batch lists) that the optimizer steps still to come take from one
    generation batch, in order: the same window ``num_iterations`` times for GRPO, one window
    per mini-batch and epoch for PPO.

    Registered with accelerate's checkpointing (``state_dict`` / ``load_state_dict``), so a
    checkpoint written between two steps of one generation batch resumes on the same samples
    (a window repeated N times is one object, pickled once)."""

    def __init__(self):
        self.windows: list[list[dict]] = []

    def fill(self, window: list[dict], steps: int) -> None:
        """Serve ``window`` to the next ``steps`` optimizer steps."""
        self.schedule([window] * steps)

    def schedule(self, windows: list[list[dict]]) -> None:
        """Serve ``windows[k]`` to the k-th optimizer step from now."""
        self.windows = list(windows)

    def take(self) -> list[dict] | None:
        return self.windows.pop(0) if self.windows else None

    def clear(self) -> int:
        """Drop the windows not yet served (e.g. PPO's early stop); returns how many."""
        dropped, self.windows = len(self.windows), []
        return dropped

    @property
    def steps_left(self) -> int:
        return len(self.windows)

    def state_dict(self) -> dict:
        return {"windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        self.windows = list(state["windows"])


@dataclass
class Generated:
    """The samples of one generation batch: ``prompts`` (P items), ``completions`` (P * G, a
    prompt's G completions contiguous), their rewards, and time spent."""

    items: list[dict]
    completions: list
    rewards: object  # posttrain.rollout.rewards.RewardResult
    generation_seconds: float
    reward_seconds: float


class OnlineTrainer(ReferenceTrainer):
    """Shared machinery of GRPO and PPO; subclasses define :meth:`make_rollouts` and the loss."""

    config_class = OnlineConfig

    def __init__(self, model=None, config=None, *, reward_funcs=None, **kwargs):
        from posttrain.rollout import RewardFunctions

        super().__init__(model, config, **kwargs)
        funcs = reward_funcs if reward_funcs is not None else self.config.reward_funcs
        self.rewards = RewardFunctions(funcs, self.config.reward_weights) if funcs else None
        self.check_reward_columns()
        self.buffer = ExperienceBuffer()
        self._engine = None

    # ------------------------------------------------------------------ data

    def check_reward_columns(self) -> None:
        if self.rewards is not None:
            self.rewards.check_columns(self._columns)

    def needs_reference(self) -> bool:
        return False

    def build_batch_source(self, rows, split: str) -> BatchSource:
        from posttrain.data.prompt_only import prepare_prompts

        cfg = self.config
        set_chat_template(self.tokenizer, cfg.chat_template)
        prepared = prepare_prompts(
            rows, self.tokenizer, system_prompt=cfg.system_prompt, chat_template_kwargs=cfg.chat_template_kwargs,
            max_prompt_length=cfg.max_prompt_length,
        )
        self.reporter.print(f"[bold]{split} data[/] ({prepared.data_format}):")
        for line in prepared.lines():
            self.reporter.print(f"  {line}")
        items = prepared.items
        self._columns = prepared.columns
        if split == "train":
            self._prompt_capacity = max(len(item["prompt_ids"]) for item in items)
            self._conversational = prepared.data_format.conversational
        return BatchSource(items, [len(item["prompt_ids"]) for item in items], _as_list)

    def train_loader_batch_size(self) -> int:
        return self.config.prompts_per_step

    def total_steps(self, micro_batches_per_epoch: int) -> int:
        cfg = self.config
        if cfg.max_steps > 0:
            return cfg.max_steps
        return max(1, math.ceil(cfg.num_epochs * micro_batches_per_epoch)) * self.steps_per_generation()

    def steps_per_generation(self) -> int:
        """Optimizer steps each generation batch serves (GRPO: ``num_iterations``)."""
        return self.config.num_iterations

    def checkpoint_objects(self) -> list:
        return [self.buffer]

    def log_sample_completions(self, step: int) -> None:
        """Nothing extra: online trainers log the rollouts they train on (see make_window)."""

    # ------------------------------------------------------------------ model

    def wrap_model(self, model) -> torch.nn.Module:
        if self.config.packing:
            check_packing_isolation(model, batch_rows=2, device=self.accelerator.device)
        return TokenLogProbs.for_config(model, self.config)

    def engine(self, module):
        """The generation engine over the live policy weights (built once)."""
        from posttrain.rollout import HFGenerationEngine

        if self._engine is None:
            self._engine = HFGenerationEngine(self.model, self.tokenizer, batch_size=self.config.generation_batch_size, accelerator=self.accelerator)
        return self._engine

    def sampling_options(self, greedy: bool = False):
        from posttrain.data.prompts import end_of_turn_ids
        from posttrain.rollout import SamplingOptions

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

    # ------------------------------------------------------------------ making experience

    def next_window(self, module, stream: Iterator, state: TrainState) -> list:
        window = self.buffer.take()
        if window is None:
            self.buffer.schedule(self.make_windows(module, stream, state))
            window = self.buffer.take()
        return window

    def make_windows(self, module, stream: Iterator, state: TrainState) -> list[list[dict]]:
        """The windows of the optimizer steps one new generation batch serves (default: one
        window, :meth:`make_window`, served ``num_iterations`` times)."""
        return [self.make_window(module, stream, state)] * self.config.num_iterations

    def generate_and_score(self, module, stream: Iterator) -> Generated:
        """Next prompt batch -> ``num_generations`` samples each -> rewards."""
        items = next(stream)
        start = time.perf_counter()
        completions = self.engine(module).generate(
            [item["prompt_ids"] for item in items], self.sampling_options(), self.config.num_generations
        )
        generated = time.perf_counter()
        rewards = self.score(items, completions, self.config.num_generations)
        return Generated(items, completions, rewards, generated - start, time.perf_counter() - generated)

    def score(self, items: list[dict], completions: list, group_size: int):
        """Rewards of ``completions`` (``group_size`` per item, contiguous)."""
        if self.rewards is None:
            raise ConfigError("no reward functions: pass reward_funcs=[...] (or set reward_funcs in the config)")
        repeated = [item for item in items for _ in range(group_size)]
        columns = {name: [item["columns"][name] for item in repeated] for name in self._columns}
        return self.rewards(
            [item["prompt"] for item in repeated],
            [completion.text for completion in completions],
            [list(completion.token_ids) for completion in completions],
            columns,
        )

    def make_window(self, module, stream: Iterator, state: TrainState) -> list[dict]:
        raise TypeError(f"{type(self).__name__} must define make_window")

    def collate_window(self, rollouts: list[Rollout]) -> list[dict]:
        """Cut a generation batch into the micro-batches of one optimizer step."""
        cfg = self.config
        capacity = self._prompt_capacity + cfg.max_completion_length if cfg.packing else 0
        return [
            collate_rollouts(chunk, self.tokenizer.pad_token_id, capacity)
            for chunk in split_micro_batches(rollouts, cfg.per_device_train_batch_size)
        ]

    @torch.no_grad()
    def token_logps(self, rollouts: list[Rollout], *, reference: bool = False) -> list[list[float]]:
        """Per-token log-probs ``[(completion length,)]`` of each rollout's completion under the
        current policy (or the reference), at the sampling temperature, without grad."""

        def forward(ids, position_ids, scored):
            if reference:
                return {"logps": self._reference_token_logps(ids, position_ids, scored)}
            return {"logps": self._policy_module()(ids, position_ids, temperature=self.config.temperature, positions=scored).logps}

        return [values["logps"] for values in self.completion_passes(rollouts, forward)]

    @torch.no_grad()
    def completion_passes(self, rollouts: list[Rollout], forward) -> list[dict[str, list[float]]]:
        """Per-token values of each rollout's completion tokens, without grad: ``forward(input_ids,
        position_ids, completion_positions)`` maps packed ``(R, T)`` inputs to ``{name: (R, T)
        tensor}`` aligned with the input tokens (only the completion tokens need be right);
        returns, per rollout, ``{name: [one float per completion token]}``. Runs in chunks of
        ``per_device_eval_batch_size`` rollouts."""
        out = []
        capacity = self._prompt_capacity + self.config.max_completion_length if self.config.packing else 0
        device = self.accelerator.device
        for chunk in split_micro_batches(rollouts, self.config.per_device_eval_batch_size):
            batch = collate_rollouts(chunk, self.tokenizer.pad_token_id, capacity)
            scored = batch.get("completion_positions")
            values = forward(batch["input_ids"].to(device), batch["position_ids"].to(device), None if scored is None else scored.to(device))
            views = {name: completion_view(v, batch["completion_index"]).float().cpu() for name, v in values.items()}
            out.extend({name: view[i, : len(r.completion_ids)].tolist() for name, view in views.items()} for i, r in enumerate(chunk))
        return out

    def _optimizer_step(self, module, optimizer, scheduler, window, state, metrics) -> None:
        start = time.perf_counter()
        super()._optimizer_step(module, optimizer, scheduler, window, state, metrics)
        metrics.update({"time/training": Metric.mean(time.perf_counter() - start)})

    def completion_log_step(self, state: TrainState, steps: int) -> int | None:
        """The first of the next ``steps`` optimizer steps (those a new generation batch serves)
        at which the completion log is due, or None."""
        return next((s for s in range(state.step + 1, state.step + 1 + steps) if self.completion_log.due(s)), None)

    def _policy_module(self) -> TokenLogProbs:
        return self.accelerator.unwrap_model(self.module)

    def _reference_token_logps(self, input_ids, position_ids, positions=None) -> torch.Tensor:
        """``(R, T)`` per-token reference log-probs (a frozen copy, or the policy without its
        LoRA adapters); with ``positions``, right at those flat indices only."""
        temperature = self.config.temperature
        if self._reference_source == "model":
            return self._reference_module()(input_ids, position_ids, temperature=temperature, positions=positions).logps
        with self.model.disable_adapter():
            return self._policy_module()(input_ids, position_ids, temperature=temperature, positions=positions).logps

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the evaluation prompts, scored by the reward functions:
        ``eval/reward`` and ``eval/rewards/<name>/mean``."""
        if self.eval_source is None or self.rewards is None:
            return {}
        items = list(self.eval_source.dataset)
        with self.accelerator.split_between_processes(items) as mine:
            completions = self.engine(None).generate([i["prompt_ids"] for i in mine], self.sampling_options(greedy=True), 1)
            result = self.score(mine, completions, 1)
            metrics = reward_metrics(result.total, result.per_function, result.names)
        from posttrain.train.metrics import MetricAccumulator

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


def completion_metrics(completions: list) -> dict[str, Metric]:
    """Lengths and how completions ended."""
    lengths = torch.tensor([float(len(c.token_ids)) for c in completions])
    truncated = torch.tensor([float(c.finish_reason == "length") for c in completions])
    return {
        "completions/mean_length": Metric.mean(lengths.sum(), len(completions)),
        "completions/min_length": Metric.min(lengths.min()),
        "completions/max_length": Metric.max(lengths.max()),
        "completions/truncated_ratio": Metric.mean(truncated.sum(), len(completions)),
    }


def _as_list(items: list) -> list:
    """``collate_fn`` for prompt batches: the items as they are."""
    return list(items)
