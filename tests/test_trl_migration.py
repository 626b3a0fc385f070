"""Programs written for TRL run here as a migrating user types them (issue 20): TRL's option
names on the config objects, ``args=`` / ``processing_class=`` / ``peft_config=``,
``transformers.TrainerCallback`` objects, ``trainer.state.log_history``, ``save_model()``,
``train(resume_from_checkpoint=True)``, and a ``transformers.TrainingArguments`` object as the
config. One program per trainer (SFT, DPO, KTO, RM, GRPO) on the offline fixtures; every
expected number is derived from the program's own settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from posttrain import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    KTOConfig,
    KTOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
)
from posttrain.errors import ConfigError
from posttrain.tasks import ArithmeticTask

TASK = ArithmeticTask(seed=0)


class Recorder(TrainerCallback):
    """Writes down every event with the step it came at (what a user's logging callback does)."""

    def __init__(self):
        self.events: list[tuple] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append(("train_begin", state.global_step, state.max_steps))

    def on_epoch_end(self, args, state, control, **kwargs):
        self.events.append(("epoch_end", state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step_end", state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("log", state.global_step, dict(logs)))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("evaluate", state.global_step, dict(metrics)))

    def on_save(self, args, state, control, **kwargs):
        self.events.append(("save", state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("train_end", state.global_step))

    def steps(self, kind: str) -> list[int]:
        return [event[1] for event in self.events if event[0] == kind]


def _records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def _same_records(log_history: list[dict], records: list[dict]) -> bool:
    """``log_history`` holds what metrics.jsonl holds (which adds the wall time)."""
    return log_history == [{key: value for key, value in record.items() if key != "time"} for record in records]


def _weights_equal(model_dir, model) -> bool:
    saved = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items())


def test_sft_program(model_path, tmp_path):
    path = model_path("llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    recorder = Recorder()
    training_args = SFTConfig(
        output_dir=str(tmp_path / "sft"), num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-3,
        lr_scheduler_type="linear", max_seq_length=12, logging_steps=1, eval_strategy="steps", eval_steps=2,
        save_strategy="steps", save_steps=3, bf16=False, report_to="none", completion_only_loss=True, progress_bar=False,
    )
    trainer = SFTTrainer(
        model=path, args=training_args, train_dataset=TASK.prompt_completion("train", 8),
        eval_dataset=TASK.prompt_completion("test", 4), processing_class=tokenizer, callbacks=[recorder],
    )
    assert trainer.processing_class is tokenizer and trainer.args.num_epochs == 2 and trainer.args.max_length == 12
    assert trainer.accelerator.mixed_precision == "no" and trainer.args.loss_mode == "auto"
    assert max(trainer.train_source.lengths) <= 12  # max_seq_length truncated
    trainer.train()

    # 8 rows / batch 4 = 2 steps per epoch, 2 epochs
    assert recorder.events[0] == ("train_begin", 0, 4) and recorder.events[-1] == ("train_end", 4)
    assert recorder.steps("step_end") == [1, 2, 3, 4] and recorder.steps("epoch_end") == [2, 4]
    assert recorder.steps("evaluate") == [2, 4] and recorder.steps("save") == [3]
    history = trainer.state.log_history
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4]
    assert [entry["step"] for entry in history if "eval/loss" in entry] == [2, 4]
    assert [event[2] for event in recorder.events if event[0] == "log"] == history  # on_log saw each record
    assert _same_records(history, _records(tmp_path / "sft"))
    # linear decay from 1e-3 to 0 over 4 steps, read after each step
    assert [entry["learning_rate"] for entry in history if "loss" in entry] == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])
    saved = trainer.save_model()
    assert saved == tmp_path / "sft" / "final" and _weights_equal(saved, trainer.model)
    assert AutoTokenizer.from_pretrained(saved).get_vocab() == tokenizer.get_vocab()


class StopAfterFirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            control.should_training_stop = True


def test_dpo_program(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    path = model_path("llama")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    training_args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), beta=0.1, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        logging_steps=1, precompute_ref_log_probs=True, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none", progress_bar=False,
    )
    trainer = DPOTrainer(model=model, args=training_args, train_dataset=TASK.preference_pairs("train", 8), processing_class=tokenizer,
                         callbacks=[StopAfterFirstStep])  # a class, as transformers accepts
    assert trainer.args.reference_mode == "precomputed"
    state = trainer.train()
    assert state.global_step == 1 and state.max_steps == 3  # stopped by the callback, finished normally:
    assert _weights_equal(tmp_path / "dpo" / "final", trainer.model) and (tmp_path / "dpo" / "trainer_state.json").is_file()
    assert [entry["step"] for entry in state.log_history] == [1] and "rewards/accuracies" in state.log_history[0]
    assert _same_records(state.log_history, _records(tmp_path / "dpo"))
    assert isinstance(trainer.pop_callback(StopAfterFirstStep), StopAfterFirstStep) and trainer.callbacks == []


def test_kto_program_with_add_callback_and_save_model_elsewhere(model_path, tmp_path):
    path = model_path("llama")
    training_args = KTOConfig(
        output_dir=str(tmp_path / "kto"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
        desirable_weight=1.0, undesirable_weight=1.0, save_strategy="no", report_to="none", progress_bar=False,
    )
    trainer = KTOTrainer(model=path, args=training_args, train_dataset=TASK.unpaired("train", 8), processing_class=AutoTokenizer.from_pretrained(path))
    recorder = Recorder()
    trainer.add_callback(recorder)
    trainer.train()
    assert recorder.steps("step_end") == [1, 2] and recorder.steps("save") == []
    assert _same_records(trainer.state.log_history, _records(tmp_path / "kto"))
    elsewhere = trainer.save_model(str(tmp_path / "kto-model"))
    assert _weights_equal(elsewhere, trainer.model)


def test_reward_program_with_peft_config(model_path, tmp_path, capfd):
    from peft import LoraConfig

    path = model_path("llama")
    training_args = RewardConfig(
        output_dir=str(tmp_path / "rm"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
        eval_strategy="no", report_to="none", progress_bar=False,
    )
    trainer = RewardTrainer(
        model=path, args=training_args, train_dataset=TASK.preference_pairs("train", 8), processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"),
    )
    assert (trainer.args.use_lora, trainer.args.lora_r, trainer.args.lora_alpha) == (True, 4, 8)
    assert sorted(trainer.args.lora_target_modules) == ["q_proj", "v_proj"]
    trainer.train()
    output = capfd.readouterr()
    assert "LOAD REPORT" not in output.out + output.err  # transformers' table, replaced by one line:
    assert "new, randomly initialised (not in the checkpoint): score.weight" in output.out
    assert [entry["step"] for entry in trainer.state.log_history] == [1, 2] and "accuracy" in trainer.state.log_history[0]
    assert (tmp_path / "rm" / "final" / "adapter_config.json").is_file()


def test_grpo_program(model_path, tmp_path):
    path = model_path("llama")

    def reward_len(completions, **kwargs):  # TRL's quick-start reward
        return [-abs(5 - len(completion)) for completion in completions]

    recorder = Recorder()
    training_args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), num_generations=2, per_device_train_batch_size=4, max_completion_length=8,
        max_steps=2, logging_steps=1, log_completions=True, num_completions_to_print=2, use_vllm=False,
        learning_rate=1e-4, report_to="none", progress_bar=False,
    )
    trainer = GRPOTrainer(model=path, reward_funcs=[reward_len], args=training_args, train_dataset=TASK.prompt_only("train", 8),
                          processing_class=AutoTokenizer.from_pretrained(path), callbacks=[recorder])
    assert trainer.args.log_completions_steps == 1
    trainer.train()
    assert recorder.steps("log") == [1, 2] and all("reward" in entry for entry in trainer.state.log_history)
    completions = (tmp_path / "grpo" / "completions.jsonl").read_text().splitlines()
    assert {json.loads(line)["step"] for line in completions} == {1, 2}  # 2 prompts x 2 generations per step
    assert len(completions) == 8


def test_a_transformers_training_arguments_object_is_a_config(model_path, tmp_path):
    path = model_path("llama")
    args = TrainingArguments(output_dir=str(tmp_path / "ta"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1, report_to="none", save_strategy="no", lr_scheduler_type="constant")
    trainer = SFTTrainer(model=path, args=args, train_dataset=TASK.prompt_completion("train", 8), progress_bar=False)
    cfg = trainer.args
    assert (cfg.output_dir, cfg.max_steps, cfg.learning_rate, cfg.lr_scheduler, cfg.save_steps) == (str(tmp_path / "ta"), 2, 1e-3, "constant", 0)
    history = trainer.train().log_history
    assert [entry["learning_rate"] for entry in history] == [1e-3, 1e-3]

    with pytest.raises(ConfigError, match=r"transformers.TrainingArguments sets eval_on_start=True, label_smoothing_factor=0.1, which SFTConfig has no counterpart"):
        SFTTrainer(model=path, args=TrainingArguments(output_dir=str(tmp_path / "x"), eval_on_start=True, label_smoothing_factor=0.1),
                   train_dataset=TASK.prompt_completion("train", 4))


def test_trl_calls_that_cannot_work_say_what_to_write(model_path, tmp_path):
    path = model_path("llama")
    rows = TASK.prompt_completion("train", 4)
    with pytest.raises(ConfigError, match=r"second positional argument is the config.*processing_class="):
        SFTTrainer(path, AutoTokenizer.from_pretrained(path), train_dataset=rows)
    with pytest.raises(ConfigError, match=r"unknown option 'learnig_rate' for SFTConfig; did you mean learning_rate"):
        SFTConfig(learnig_rate=1e-4)
    with pytest.raises(ConfigError, match="SFTTrainer takes a SFTConfig, got a DPOConfig"):
        SFTTrainer(path, DPOConfig(), train_dataset=rows)
    with pytest.raises(ConfigError, match="neither a transformers.TrainerCallback"):
        SFTTrainer(path, train_dataset=rows, callbacks=[42])


def test_train_resume_from_checkpoint_true(model_path, tmp_path, kill_at):
    path = model_path("llama")
    rows = TASK.prompt_completion("train", 16)

    def trainer(**extra):
        args = SFTConfig(output_dir=str(tmp_path), max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                         logging_steps=1, progress_bar=False)
        return SFTTrainer(model=path, args=args, train_dataset=rows, **extra)

    with pytest.raises(RuntimeError, match="killed at step 3"):
        trainer(callbacks=[kill_at(3)]).train()
    resumed = trainer()
    state = resumed.train(resume_from_checkpoint=True)
    assert state.global_step == 4 and [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 4]
    # the history came back with checkpoint-2 and went on from there
    assert [entry["step"] for entry in state.log_history] == [1, 2, 3, 4]
