"""transformers.TrainerCallback objects on our loop: which events come, in what order, with
what state; the control flags the loop obeys; what is refused when a callback is added."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from posttrain import SFTConfig, SFTTrainer
from posttrain.errors import ConfigError
from posttrain.tasks import ArithmeticTask

EVENTS = ("on_init_end", "on_train_begin", "on_epoch_begin", "on_step_begin", "on_substep_end", "on_pre_optimizer_step",
          "on_optimizer_step", "on_step_end", "on_log", "on_evaluate", "on_save", "on_epoch_end", "on_train_end")


class Everything(TrainerCallback):
    def __init__(self):
        self.seen: list[tuple[str, int]] = []


for _name in EVENTS:
    setattr(Everything, _name, lambda self, args, state, control, _name=_name, **kw: self.seen.append((_name, state.global_step)))


def _trainer(model_path, tmp_path, callbacks, rows=8, **values):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
                   learning_rate=1e-3, logging_steps=0, progress_bar=False, save_final_model=False)
    options.update(values)
    task = ArithmeticTask(seed=1)
    return SFTTrainer(model_path("llama"), SFTConfig(**options), train_dataset=task.prompt_completion("train", rows),
                      eval_dataset=task.prompt_completion("test", 2), callbacks=callbacks)


def test_event_order_of_a_run(model_path, tmp_path):
    everything = Everything()
    # 8 rows, 2 per micro-batch, 2 micro-batches per step: 2 steps per epoch; 3 steps = 1.5 epochs
    _trainer(model_path, tmp_path, [everything], max_steps=3, logging_steps=2, save_steps=2).train()
    step = ["on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"]
    assert [name for name, _ in everything.seen] == [
        "on_init_end", "on_train_begin", "on_epoch_begin",
        *step,                                                                            # step 1: nothing due
        *step, "on_log", "on_save", "on_epoch_end", "on_epoch_begin",                     # step 2: log, checkpoint, epoch 1 done
        *step, "on_log", "on_log", "on_evaluate", "on_train_end",                         # step 3, the last: log, evaluate (logged first, as in transformers)
    ]
    assert everything.seen[-1] == ("on_train_end", 3)
    assert ("on_save", 2) in everything.seen and ("on_epoch_end", 2) in everything.seen


class Asking(TrainerCallback):
    """Asks, at step 1, for what the schedule would not do then."""

    def __init__(self, **flags):
        self.flags = flags

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            for flag, value in self.flags.items():
                setattr(control, flag, value)


def test_control_flags_are_obeyed(model_path, tmp_path):
    asked = _trainer(model_path, tmp_path / "a", [Asking(should_log=True, should_evaluate=True, should_save=True)], max_steps=3)
    asked.train()
    history = asked.state.log_history
    assert [entry["step"] for entry in history if "loss" in entry] == [1]  # logging_steps=0: only the asked-for log
    assert [entry["step"] for entry in history if "eval/loss" in entry] == [1, 3]  # asked, and the final evaluation
    assert (tmp_path / "a" / "checkpoints" / "checkpoint-1").is_dir()

    flags_reset = _trainer(model_path, tmp_path / "b", [Asking(should_save=True)], max_steps=3)
    flags_reset.train()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["checkpoint-1"]  # not again at 2, 3

    stopped = _trainer(model_path, tmp_path / "c", [Asking(should_training_stop=True)], max_steps=3, logging_steps=5)
    state = stopped.train()
    assert state.global_step == 1
    assert [entry["step"] for entry in state.log_history] == [1, 1]  # the stopping step is the last: logged and evaluated


def test_functions_still_work_and_see_the_step_after_its_checkpoint(model_path, tmp_path):
    seen = []

    def after_step(trainer, state):
        seen.append((state.step, (tmp_path / "checkpoints" / f"checkpoint-{state.step}").is_dir()))

    trainer = _trainer(model_path, tmp_path, [after_step], save_steps=1, max_steps=3)
    trainer.train()
    assert seen == [(1, True), (2, True), (3, False)]  # no checkpoint at the last step: the final model is saved


def test_what_is_refused_when_a_callback_is_added(model_path, tmp_path):
    class Predicting(TrainerCallback):
        def on_predict(self, args, state, control, **kwargs):
            pass

    class NeedsArguments(TrainerCallback):
        def __init__(self, patience):
            self.patience = patience

    with pytest.raises(ConfigError, match=r"Predicting overrides events that are never called here \(on_predict"):
        _trainer(model_path, tmp_path, [Predicting()])
    with pytest.raises(ConfigError, match="NeedsArguments cannot be made without arguments"):
        _trainer(model_path, tmp_path, [NeedsArguments])
    with pytest.raises(ConfigError, match=r"'log' \(str\) is neither a transformers.TrainerCallback"):
        _trainer(model_path, tmp_path, ["log"])
    trainer = _trainer(model_path, tmp_path, [])
    with pytest.raises(ConfigError, match="neither"):
        trainer.add_callback(3)
    callback = Everything()
    trainer.add_callback(callback)
    trainer.remove_callback(callback)
    assert trainer.callbacks == [] and trainer.pop_callback(Everything) is None
