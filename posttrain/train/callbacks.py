"""Callbacks: ``transformers.TrainerCallback`` objects, as TRL and ``transformers.Trainer`` call
them, and plain functions ``fn(trainer, state)``.

A ``TrainerCallback`` gets ``on_<event>(args, state, control, **kwargs)`` with ``args`` the
trainer's config, ``state`` its :class:`~posttrain.train.state.TrainState` (which answers to
transformers' names: ``global_step``, ``max_steps``, ``log_history``, ``is_world_process_zero``,
...) and a ``transformers.TrainerControl`` whose flags the loop obeys after ``on_step_end``:
``should_training_stop`` ends the run after this step (final model saved as usual),
``should_save`` writes a checkpoint, ``should_evaluate`` evaluates, ``should_log`` logs.

Events called here, as in transformers: ``on_init_end`` (end of the trainer's ``__init__``),
``on_train_begin``, ``on_epoch_begin``, ``on_step_begin``, ``on_substep_end`` (after each
micro-batch but the last of a step), ``on_pre_optimizer_step``, ``on_optimizer_step``,
``on_step_end``, ``on_log``, ``on_evaluate``, ``on_save``, ``on_epoch_end`` (after the step
that consumed an epoch's last batch), ``on_train_end``, ``on_push_begin``. ``on_predict`` and
``on_prediction_step`` have no counterpart (there is no ``predict()``): a callback that
overrides them is refused when it is added, as is anything that is neither a
``TrainerCallback`` (instance or class) nor a function.

A plain function is called as ``fn(trainer, state)`` after every optimizer step, once the step's
logging, evaluation and checkpoint are done.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from posttrain.errors import ConfigError

CALLED_EVENTS = (
    "on_init_end", "on_train_begin", "on_epoch_begin", "on_step_begin", "on_substep_end", "on_pre_optimizer_step",
    "on_optimizer_step", "on_step_end", "on_log", "on_evaluate", "on_save", "on_epoch_end", "on_train_end", "on_push_begin",
)
UNCALLED_EVENTS = {
    "on_predict": "there is no predict() here",
    "on_prediction_step": "evaluation here does not go through transformers' prediction loop",
}


def _trainer_callback_class():
    from transformers import TrainerCallback

    return TrainerCallback


def checked_callback(callback):
    """``callback`` ready to be called: a ``TrainerCallback`` class is instantiated (as
    transformers does); anything that cannot be called here raises :class:`ConfigError`."""
    base = _trainer_callback_class()
    if inspect.isclass(callback) and issubclass(callback, base):
        try:
            callback = callback()
        except TypeError as error:
            raise ConfigError(f"callback {callback.__name__} cannot be made without arguments ({error}); pass an instance") from None
    if isinstance(callback, base):
        overridden = [name for name in UNCALLED_EVENTS if getattr(type(callback), name) is not getattr(base, name)]
        if overridden:
            reasons = "; ".join(f"{name}: {UNCALLED_EVENTS[name]}" for name in overridden)
            raise ConfigError(f"callback {type(callback).__name__} overrides events that are never called here ({reasons}); move that work to on_evaluate or on_step_end")
        return callback
    if callable(callback) and not inspect.isclass(callback):
        return callback
    raise ConfigError(
        f"callback {callback!r:.80} ({type(callback).__name__}) is neither a transformers.TrainerCallback (instance or class) "
        "nor a function fn(trainer, state); pass one of those"
    )


class CallbackHandler:
    """The callbacks of one trainer and the ``TrainerControl`` they share."""

    def __init__(self, callbacks: Iterable = ()):
        from transformers import TrainerControl

        self.callbacks: list = [checked_callback(callback) for callback in callbacks]
        self.control = TrainerControl()

    # ------------------------------------------------------------------ the list

    def add(self, callback) -> None:
        self.callbacks.append(checked_callback(callback))

    def pop(self, callback):
        """Remove and return ``callback`` (an instance, or the first of a class); None if absent."""
        found = self._find(callback)
        if found is not None:
            self.callbacks.remove(found)
        return found

    def _find(self, callback):
        if inspect.isclass(callback):
            return next((c for c in self.callbacks if isinstance(c, callback)), None)
        return next((c for c in self.callbacks if c is callback), None)

    @property
    def trainer_callbacks(self) -> list:
        base = _trainer_callback_class()
        return [c for c in self.callbacks if isinstance(c, base)]

    @property
    def functions(self) -> list[Callable]:
        base = _trainer_callback_class()
        return [c for c in self.callbacks if not isinstance(c, base)]

    # ------------------------------------------------------------------ calling

    def fire(self, event: str, trainer, **kwargs):
        """Call ``event`` on every ``TrainerCallback`` with transformers' arguments; returns the
        control (a callback may return a new one, as in transformers)."""
        callbacks = self.trainer_callbacks
        if not callbacks:
            return self.control
        state = trainer.state
        _describe_process(state, trainer)
        arguments = {
            "model": trainer.model, "processing_class": trainer.tokenizer, "optimizer": getattr(trainer, "optimizer", None),
            "lr_scheduler": getattr(trainer, "lr_scheduler", None), "train_dataloader": getattr(trainer, "train_dataloader", None),
            "eval_dataloader": getattr(trainer, "_eval_loader", None), **kwargs,
        }
        for callback in callbacks:
            result = getattr(callback, event)(trainer.config, state, self.control, **arguments)
            if result is not None:
                self.control = result
        return self.control

    def step_begin(self, trainer):
        """``on_step_begin``, after clearing the per-step requests (as transformers does)."""
        self.control.should_log = self.control.should_evaluate = self.control.should_save = False
        return self.fire("on_step_begin", trainer)

    def call_functions(self, trainer, state) -> None:
        for function in self.functions:
            function(trainer, state)


def _describe_process(state, trainer) -> None:
    """Give ``state`` the attributes of transformers' TrainerState that describe the run's
    settings and this process (callbacks such as transformers' own read them)."""
    cfg, acc = trainer.config, trainer.accelerator
    state.is_world_process_zero = acc.is_main_process
    state.is_local_process_zero = acc.is_local_main_process
    state.logging_steps = cfg.logging_steps
    state.eval_steps = cfg.eval_steps
    state.save_steps = cfg.save_steps
    state.train_batch_size = cfg.per_device_train_batch_size
    state.num_train_epochs = cfg.num_epochs
