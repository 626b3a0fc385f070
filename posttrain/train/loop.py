"""The one training loop, on accelerate. Every algorithm is a subclass that supplies data and an
objective; none copies the loop.

A subclass provides:

- :meth:`Trainer.build_batch_source`: rows -> a :class:`BatchSource` (map-style dataset, item
  lengths, collate function);
- :meth:`Trainer.wrap_model`: the module to train (e.g. the LM wrapped to return token log-probs);
- :meth:`Trainer.count_units`: how many loss units (tokens, pairs, ...) a micro-batch holds;
- :meth:`Trainer.compute_loss`: ``(summed loss, metrics)`` for a micro-batch.

The loop divides each micro-batch's *summed* loss by the number of units in the whole
accumulated batch across all processes, so batch 8 x accumulation 1 and batch 2 x accumulation
4 take the same optimizer step (docs/design.md, "Loss normalisation").

Its public steps, which :meth:`Trainer.train` runs and a caller that makes its own batches
(PPO's ``step``) runs too: :meth:`Trainer.start_training` (a :class:`TrainingRun`),
:meth:`Trainer.optimizer_step` per window of micro-batches, :meth:`Trainer.end_step` after each
(docs/design.md, "The life of a batch").
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from posttrain.config import TrainConfig, config_to_dict
from posttrain.errors import ConfigError, TrainingError
from posttrain.models.loading import (
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
    prepare_for_training,
    tokenizer_source,
)
from posttrain.train import sharding
from posttrain.train.callbacks import CallbackHandler
from posttrain.train.checkpoint import (
    latest_checkpoint,
)
from posttrain.train.completions import CompletionLog
from posttrain.train.console import quiet_third_party
from posttrain.train.host_sync import DeferredValue, count_window, first_non_finite, loss_scale
from posttrain.train.interrupt import InterruptGuard
from posttrain.train.metrics import Metric, MetricAccumulator
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.reporting import RunReporter
from posttrain.train.run_files import RunFiles
from posttrain.train.run_record import describe_sources
from posttrain.train.sampler import EpochBatchSampler
from posttrain.train.samples import generate_samples, sample_prompts
from posttrain.train.state import TrainState
from posttrain.train.trainer_api import TrainerAPI, accepts_trl_train_arguments, check_hub_ready, run_config
from posttrain.train.whole_weights import WholeWeights


class NonFiniteLossError(TrainingError):
    """The loss or gradient became NaN/Inf. Raised before the optimizer step, so the weights
    and every checkpoint on disk are from the last good step."""


@dataclass
class BatchSource:
    """What the loop needs to batch a dataset."""

    dataset: Sequence
    lengths: list[int]
    collate_fn: Callable
    group_by_length: bool = False


@dataclass
class TrainingRun:
    """A run between optimizer steps (:meth:`Trainer.start_training`): the prepared module,
    optimizer, schedule and data loader (None when the caller makes the batches), the position
    ``state``, the metrics since the last log line, and ``last_log``, the ``(time, tokens seen)``
    the next throughput is measured from (None until the first step, so start-up is excluded)."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    loader: object = None
    metrics: MetricAccumulator = field(default_factory=MetricAccumulator)
    last_log: tuple[float, int] | None = None


class Trainer(RunFiles, TrainerAPI):
    """Base trainer: model/tokenizer loading, the optimisation loop, evaluation, checkpoints.
    TRL's methods and names (``args``, ``save_model``, ``push_to_hub``, callbacks, ...) come from
    :class:`~posttrain.train.trainer_api.TrainerAPI`."""

    config_class: type = TrainConfig
    # False: the trainer may be built without training rows (PPO driven by generate/step)
    needs_train_data: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "train" in cls.__dict__:  # a subclass's own train() takes TRL's arguments too
            cls.train = accepts_trl_train_arguments(cls.__dict__["train"])

    @quiet_third_party()
    def __init__(
        self, model=None, config=None, *, train_dataset=None, eval_dataset=None, tokenizer=None, callbacks=(), args=None, processing_class=None, **overrides
    ):
        # ``args`` and ``processing_class`` are TRL's names for ``config`` and ``tokenizer``.
        config = _one_of("config", config, "args", args)
        tokenizer = _one_of("tokenizer", tokenizer, "processing_class", processing_class)
        self.callback_handler = CallbackHandler(callbacks)  # a callback of the wrong kind is refused before anything loads
        self.config = self._resolve_config(config, overrides)
        cfg = self.config
        self._whole_weights = None  # sharded runs: the model's structure, filled for generation
        self.accelerator = self._build_accelerator(cfg)
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self._agree_on_output_dir()
        self.reporter = RunReporter(self.accelerator, cfg.output_dir, progress_bar=cfg.progress_bar)
        self.reporter.listeners.append(self._record_log)
        if self._output_dir_defaulted:
            self.reporter.print_verbatim(f"output_dir: {cfg.output_dir} (a new directory per run; set output_dir to choose one)")
        model = model if model is not None else cfg.model
        if model is None:
            raise ConfigError("no model given: pass model=... (a path, hub name or model object) or set the option 'model'")
        self._output_dir_decision(early=True)  # refuse an occupied output_dir before any model loads
        check_hub_ready(cfg)
        self._sources = describe_sources(model, tokenizer, train_dataset, eval_dataset)
        self.tokenizer = load_tokenizer(tokenizer if tokenizer is not None else cfg.tokenizer, tokenizer_source(model))
        self.model = self.load_model(model)
        if cfg.disable_dropout:  # a reference copy or a critic the trainer holds does the same itself
            disable_dropout(self.model)
        self.completion_log = CompletionLog(
            self.accelerator, self.reporter.console, cfg.output_dir, every=cfg.log_completions_steps,
            rows_to_print=cfg.num_completions_to_print, unique_prompts=cfg.log_unique_prompts,
        )
        train_rows, eval_rows = self._dataset_rows(train_dataset, eval_dataset)
        self._sample_prompts = (
            sample_prompts(eval_rows if eval_rows is not None else train_rows, cfg.num_completions_to_print) if cfg.log_completions_steps else []
        )
        self.train_source = self.build_batch_source(train_rows, "train")
        self.eval_source = self.build_batch_source(eval_rows, "eval") if eval_rows is not None else None
        self.state = TrainState()
        self.callback_handler.fire("on_init_end", self)

    # ------------------------------------------------------------------ hooks for subclasses

    def load_model(self, model):
        """The model to train: loaded when given as a path, LoRA applied when asked."""
        cfg = self.config
        return prepare_for_training(load_causal_lm(model, model_dtype=cfg.model_dtype, attn_implementation=cfg.attn_implementation), cfg)

    def build_batch_source(self, rows, split: str) -> BatchSource:
        raise TypeError(f"{type(self).__name__} must define build_batch_source")

    def wrap_model(self, model) -> torch.nn.Module:
        return model

    def count_units(self, batch) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define count_units")

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        raise TypeError(f"{type(self).__name__} must define compute_loss")

    def before_accumulation(self, module, window: list) -> None:
        """Called with all micro-batches of an optimizer step before any of them is trained on
        (KTO estimates its KL reference point over the whole accumulated batch here)."""

    def train_loader_batch_size(self) -> int:
        """Items per batch of the training data loader (online trainers load prompts per step)."""
        return self.config.per_device_train_batch_size

    def next_window(self, module, stream: Iterator, state: TrainState) -> list:
        """The micro-batches of the next optimizer step, taken from the data ``stream``. Online
        trainers override this to make experience (generate, score) from the prompts it yields."""
        return [next(stream) for _ in range(self.config.gradient_accumulation_steps)]

    def checkpoint_objects(self) -> list:
        """Objects with ``state_dict``/``load_state_dict`` that checkpoints must hold besides the
        model, optimizer and scheduler (an online trainer's experience buffer)."""
        return []

    def warn_about_data_size(self) -> None:
        cfg = self.config
        if self._batches_per_epoch < cfg.gradient_accumulation_steps:
            self.reporter.print(
                f"[yellow]warning[/]: the data gives {self._batches_per_epoch} micro-batch(es) per epoch per process but "
                f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}: every optimizer step passes over the "
                "same rows more than once. Use more data, smaller batches or less accumulation."
            )

    def log_sample_completions(self, step: int) -> None:
        """The completion log of trainers that do not sample while training: greedy completions
        of a few fixed prompts (see :mod:`posttrain.train.samples`)."""
        if not self._sample_prompts:
            return
        cfg = self.config
        rows = generate_samples(
            self.model, self.tokenizer, self.accelerator, self._sample_prompts, getattr(cfg, "chat_template_kwargs", None), weights=self.gathered_weights
        )
        self.completion_log.log(step, rows if self.accelerator.is_main_process else [])

    def count_tokens(self, batch) -> int:
        return int(batch.get("num_tokens", 0)) if isinstance(batch, dict) else 0

    def gathered_weights(self):
        """A context manager giving the model to generate with: None (generate with the live model)
        or, once a sharded run has started, a whole-weights copy gathered from the shards
        (:mod:`posttrain.train.whole_weights`). Every process must enter it together."""
        if self._whole_weights is None:
            return contextlib.nullcontext(None)
        return self._whole_weights.gathered()

    # ------------------------------------------------------------------ set-up

    def _resolve_config(self, config, overrides):
        """The run's own config (see :func:`~posttrain.train.trainer_api.run_config`); notes
        whether the output_dir was chosen by default."""
        config, self._output_dir_defaulted = run_config(self, config, overrides)
        return config

    @staticmethod
    def _build_accelerator(cfg):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        precision = cfg.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        _release_accelerator_state(precision)
        plugin = sharding.plugin_for_run(cfg, precision)  # None: unsharded
        sharded = plugin is not None
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        with sharding.launcher_environment_kept():
            accelerator = Accelerator(
                # accelerate runs several CPU processes as one job (gloo) only when told cpu=True; without
                # it each process of `torchrun` / `accelerate launch` on a CPU machine trains alone.
                cpu=(launched > 1 or sharded) and not _has_accelerator_device(),
                fsdp_plugin=plugin,
                mixed_precision=precision,
                log_with=list(cfg.report_to) or None,
                project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
            )
        if launched != accelerator.num_processes:
            raise RuntimeError(
                f"launched as {launched} processes (WORLD_SIZE) but accelerate sees {accelerator.num_processes}: each "
                "process would train alone on the whole data and overwrite the others' outputs. Launch with "
                "`accelerate launch` after `accelerate config`, or check the distributed environment variables."
            )
        if sharded:
            sharding.activate(accelerator, plugin)
        return accelerator

    def _dataset_rows(self, train_dataset, eval_dataset):
        from posttrain.data.columns import rename_columns
        from posttrain.data.loading import load_rows, split_rows

        cfg = self.config
        if train_dataset is None and cfg.train_data is None and not self.needs_train_data:
            return None, None
        train = rename_columns(load_rows(train_dataset if train_dataset is not None else cfg.train_data, "train_data"), cfg.rename_columns)
        evaluation = eval_dataset if eval_dataset is not None else cfg.eval_data
        evaluation = rename_columns(load_rows(evaluation, "eval_data"), cfg.rename_columns) if evaluation is not None else None
        if evaluation is None and cfg.eval_fraction > 0:
            train, evaluation = split_rows(train, cfg.eval_fraction, cfg.seed)
        return train, evaluation

    def _dataloader(self, source: BatchSource, batch_size: int, *, shuffle: bool):
        sampler = EpochBatchSampler(
            source.lengths,
            batch_size,
            seed=self.config.seed,
            shuffle=shuffle,
            group_by_length=source.group_by_length and shuffle,
        )
        loader = DataLoader(
            source.dataset,
            batch_sampler=sampler,
            collate_fn=source.collate_fn,
            num_workers=self.config.dataloader_num_workers,
            pin_memory=torch.cuda.is_available(),
            # Every new iterator draws a worker seed from this generator; without one it draws
            # from torch's global RNG, and the iterator a resumed run creates would shift the
            # global RNG (sampling, dropout) away from the uninterrupted run's.
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        return loader, sampler

    def total_steps(self, micro_batches_per_epoch: int) -> int:
        cfg = self.config
        if cfg.max_steps > 0:
            return cfg.max_steps
        return max(1, math.ceil(cfg.num_epochs * micro_batches_per_epoch / cfg.gradient_accumulation_steps))

    # ------------------------------------------------------------------ the loop

    @accepts_trl_train_arguments
    def train(self) -> TrainState:
        """Train until ``max_steps`` / ``num_epochs`` (or a callback's
        ``control.should_training_stop``); returns the final :class:`TrainState`. TRL's
        ``train(resume_from_checkpoint=True | path)`` works too."""
        loader, sampler = self._dataloader(self.train_source, self.train_loader_batch_size(), shuffle=True)
        run = self.start_training(loader)
        self.train_dataloader = run.loader
        state, events = run.state, self.callback_handler
        self.warn_about_data_size()
        self.reporter.start(state.total_steps, state.step)
        stream = self._micro_batches(run.loader, sampler, state)
        interrupt = InterruptGuard.install()
        events.fire("on_train_begin", self)
        events.fire("on_epoch_begin", self)
        epochs_done = state.epoch
        try:
            run.module.train()
            while state.step < state.total_steps and not events.control.should_training_stop:
                events.step_begin(self)
                window = self.next_window(run.module, stream, state)
                self.optimizer_step(run, window)
                self.reporter.advance(state.step)
                self.end_step(run)
                epochs_done = self._epoch_events(state, epochs_done)
                self._stop_if_interrupted(interrupt, state)
        finally:
            interrupt.restore()
            self.reporter.close()
        self._finish()
        events.fire("on_train_end", self)
        self._push_if_asked()
        return state

    def start_training(self, loader=None) -> TrainingRun:
        """Wrap and prepare the model (and ``loader``, when training from data), build the
        optimizer and schedule, register what checkpoints hold and resume. Sets ``self.module``
        and ``self.state``. A trainer driven step by step (PPO's ``step``) starts without a
        loader."""
        cfg, acc = self.config, self.accelerator
        module = self.wrap_model(self.model)
        optimizer = build_optimizer(module, cfg)
        if acc.is_fsdp2:  # before sharding: the structure only, no weights are copied
            policy = acc.state.fsdp_plugin.mixed_precision_policy
            self._whole_weights = WholeWeights(self.model, dtype=getattr(policy, "param_dtype", None))
            units = sharding.set_units(acc, module)
        if loader is None:
            module, optimizer = acc.prepare(module, optimizer)
        else:
            module, optimizer, loader = acc.prepare(module, optimizer, loader)
        if acc.is_fsdp2:
            sharding.check_sharded(module, acc.num_processes)
            self.reporter.print(sharding.sharding_summary(module, acc.num_processes, units))
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, None
        self._batches_per_epoch = max(len(loader), 1) if loader is not None else 1
        state = TrainState(
            total_steps=self.total_steps(len(loader) if loader is not None else 0),
            global_batch=self.train_loader_batch_size() * acc.num_processes,
        )
        # Not prepared by accelerate, which would step it once per process per step.
        scheduler = self.build_lr_scheduler(optimizer, state.total_steps)
        self.lr_scheduler = scheduler
        acc.register_for_checkpointing(scheduler)
        for extra in self.checkpoint_objects():
            acc.register_for_checkpointing(extra)
        state = self._maybe_resume(state)
        self.state = state
        self._write_run_files()
        self.reporter.begin_run()
        if cfg.report_to:
            acc.init_trackers(cfg.run_name or "posttrain", config=_flat_config(cfg))
        trainable, total = count_parameters(module)
        steps = f"{state.total_steps} steps" if state.total_steps else "as many steps as step() is called"
        self.reporter.print(
            f"[bold]{type(self).__name__}[/]: {steps}, {trainable:,} trainable of {total:,} parameters, "
            f"{acc.num_processes} process(es), mixed precision {acc.mixed_precision}"
        )
        return TrainingRun(module, optimizer, scheduler, state, loader)

    def build_lr_scheduler(self, optimizer, total_steps: int):
        """The learning-rate schedule over ``total_steps`` optimizer steps."""
        return build_scheduler(optimizer, self.config, total_steps)

    def _micro_batches(self, loader, sampler, state: TrainState) -> Iterator:
        """An endless stream of micro-batches that keeps ``state`` at the exact data position."""
        while True:
            sampler.start_epoch(state.epoch)
            epoch_loader = self.accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
            for batch in epoch_loader:
                state.batches_in_epoch += 1
                yield batch
            state.epoch += 1
            state.batches_in_epoch = 0

    def optimizer_step(self, run: TrainingRun, window: list, metrics=None) -> None:
        """Train on ``window`` (the micro-batches of one step), clip, check the loss and gradient
        are finite, step optimizer and schedule. Metrics go to ``metrics`` (anything with
        ``update(dict)``; default ``run.metrics``)."""
        cfg, acc = self.config, self.accelerator
        module, optimizer, scheduler, state = run.module, run.optimizer, run.scheduler, run.state
        metrics = run.metrics if metrics is None else metrics
        # Counted without reading the device where the batches say them (see train/host_sync.py).
        units, tokens = count_window(acc, [self.count_units(b) for b in window], [self.count_tokens(b) for b in window])
        scale = loss_scale(units, acc.num_processes)
        window_loss = torch.zeros((), device=acc.device)
        self.before_accumulation(module, window)
        for index, batch in enumerate(window):
            # Under FSDP gradients are reduce-scattered after every micro-batch, so they stay
            # sharded (accelerate's no_sync would accumulate them whole on every process).
            sync = index == len(window) - 1 or acc.is_fsdp2
            with contextlib.nullcontext() if sync else acc.no_sync(module):
                loss_sum, batch_metrics = self.compute_loss(module, batch)
                acc.backward(loss_sum * scale)
            window_loss += loss_sum.detach().float()
            metrics.update(batch_metrics)
            if index < len(window) - 1:
                self.callback_handler.fire("on_substep_end", self)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(module.parameters(), max_norm)
        # The one read of the device per step, before the weights change.
        problem = first_non_finite(window_loss, grad_norm, check_grad_norm=acc.mixed_precision != "fp16")
        if problem is not None:
            self._stop_non_finite(*problem, state)
        self.callback_handler.fire("on_pre_optimizer_step", self)
        optimizer.step()
        self.callback_handler.fire("on_optimizer_step", self)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += int(tokens.get() if isinstance(tokens, DeferredValue) else tokens)
        if grad_norm is not None:
            metrics.update({"grad_norm": Metric.mean(grad_norm)})

    def _stop_non_finite(self, what: str, value: float, state: TrainState) -> None:
        checkpoint = latest_checkpoint(self.config.output_dir)
        raise NonFiniteLossError(
            f"{what} is {value} at step {state.step + 1} (epoch {state.epoch}); the optimizer step was not taken "
            f"and the run stopped. Last good checkpoint: {checkpoint or 'none written'}. "
            "Try a lower learning_rate, max_grad_norm > 0, bf16 instead of fp16, or check the data of this step."
        )

    def end_step(self, run: TrainingRun, *, scheduled_log: bool = True) -> None:
        """After an optimizer step: the TrainerCallbacks' ``on_step_end`` (which may ask for a
        log, evaluation, checkpoint or stop), the metric line when due (``scheduled_log=False``:
        only when a callback asks; the caller logs with :meth:`log_metrics`), evaluation, the
        completion log, a checkpoint, the plain callbacks."""
        cfg, state, last_log = self.config, run.state, run.last_log
        # TrainerCallbacks see the step first and may ask for a log, evaluation, checkpoint or stop
        control = self.callback_handler.fire("on_step_end", self)
        final = state.step == state.total_steps or control.should_training_stop
        due = scheduled_log and cfg.logging_steps and (state.step % cfg.logging_steps == 0 or final)
        logged = due or control.should_log
        if logged:
            self.log_metrics(run)
        if self.eval_source is not None and ((cfg.eval_steps and state.step % cfg.eval_steps == 0) or final or control.should_evaluate):
            self.evaluate()
        if self.completion_log.due(state.step):
            self.log_sample_completions(state.step)
        if (cfg.save_steps and state.step % cfg.save_steps == 0 and not final) or control.should_save:
            self._save_checkpoint(state)
        self.callback_handler.call_functions(self, state)
        # evaluation and checkpoints above are not training time: the next interval starts here
        if logged or last_log is None:
            run.last_log = (time.perf_counter(), state.tokens_seen)

    def log_metrics(self, run: TrainingRun) -> None:
        """One metric line at the current step: the metrics accumulated since the last one, the
        learning rate, epoch, tokens seen and the throughput since the last line."""
        state, last_log = run.state, run.last_log
        values = run.metrics.compute(self.accelerator)
        now = time.perf_counter()
        values.update(
            {
                "learning_rate": run.scheduler.get_last_lr()[0],
                "epoch": state.epoch + state.batches_in_epoch / self._batches_per_epoch,
                "tokens_seen": float(state.tokens_seen),
            }
        )
        if last_log is not None:
            values["tokens_per_second"] = (state.tokens_seen - last_log[1]) / max(now - last_log[0], 1e-9)
        self.reporter.log(state.step, values)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def compute_eval_metrics(self) -> dict[str, float]:
        """Metrics over the whole evaluation set, prefixed ``eval/`` (recorded by
        :meth:`~posttrain.train.trainer_api.TrainerAPI.evaluate`)."""
        if self.eval_source is None:
            return {}
        if not hasattr(self, "_eval_loader"):
            loader, _ = self._dataloader(self.eval_source, self.config.per_device_eval_batch_size, shuffle=False)
            self._eval_loader = self.accelerator.prepare(loader)
        module = getattr(self, "module", None) or self._module_before_training()
        was_training = module.training
        module.eval()
        metrics = MetricAccumulator()
        with self.accelerator.autocast():
            for batch in self._eval_loader:
                _, batch_metrics = self.compute_loss(module, batch)
                metrics.update(batch_metrics)
        module.train(was_training)
        return {f"eval/{name}": value for name, value in metrics.compute(self.accelerator).items()}

    def _module_before_training(self) -> torch.nn.Module:
        """The wrapped model for an evaluation before ``train()``, placed on the device by hand:
        ``accelerator.prepare`` would register it for checkpointing, and accelerate pairs a
        checkpoint's model files with the registered models by position, so a run that evaluated
        first would write checkpoints that a run that did not could not load."""
        if getattr(self, "_unprepared_module", None) is None:
            self._unprepared_module = self.wrap_model(self.model).to(self.accelerator.device)
        return self._unprepared_module


def _one_of(name: str, value, trl_name: str, trl_value):
    if value is not None and trl_value is not None:
        raise ConfigError(f"both {name}= and {trl_name}= given; they are the same thing (TRL calls {name} {trl_name}): pass one")
    return value if value is not None else trl_value


def _release_accelerator_state(mixed_precision: str) -> None:
    """Let a second trainer in the same process (SFT then DPO in a notebook) use another mixed
    precision. accelerate keeps one process-wide AcceleratorState and refuses a new Accelerator
    whose precision differs; its per-run part is dropped here, while the process group
    (PartialState) stays as it is. accelerate offers no public call for this."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _has_accelerator_device() -> bool:
    """Whether this machine has a GPU-like device that accelerate would run on (not only CPUs)."""
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available()


def _flat_config(config) -> dict:
    """Config values trackers accept (scalars and strings)."""
    flat = {}
    for key, value in config_to_dict(config).items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat
