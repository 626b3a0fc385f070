"""The training loop: loss normalisation under accumulation (must-show 4), exact resume
(must-show 5), NaN stops, checkpoint rotation and the final save."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import SFTConfig, SFTTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale
from posttrain.train.loop import NonFiniteLossError


def _rows():
    # 1- to 3-turn conversations: micro-batches hold very different numbers of loss tokens, which
    # is exactly where averaging per micro-batch would give a different gradient.
    task = ArithmeticTask(seed=1)
    return task.conversations("train", 3, turns=1) + task.conversations("train", 3, turns=3) + task.conversations("train", 2, turns=2)


def _config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        learning_rate=1e-2,
        loss_mode="assistant",
        group_by_length=False,
        progress_bar=False,
        logging_steps=0,
        save_final_model=False,
        lr_scheduler="constant",
        max_length=None,
    )
    values.update(overrides)
    return SFTConfig(**values)


def _sft_first_step_gradients(first_step_gradients, model_path, tmp_path, batch, accumulation, **overrides):
    config = _config(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=1, max_grad_norm=0.0, **overrides)
    return first_step_gradients(SFTTrainer(model_path("llama"), config, train_dataset=_rows()).train)


def test_accumulation_matches_one_big_batch(first_step_gradients, model_path, tmp_path):
    big = _sft_first_step_gradients(first_step_gradients, model_path, tmp_path / "a", batch=8, accumulation=1)
    small = _sft_first_step_gradients(first_step_gradients, model_path, tmp_path / "b", batch=2, accumulation=4)
    assert len(big) > 10
    assert_tensors_close_to_scale(small, big)
    assert sum(g.abs().sum() for g in big.values()) > 0


@pytest.mark.parametrize("layout", [{"packing": True}, {"padding_free": True}, {"gradient_checkpointing": True}])
def test_packed_padding_free_and_checkpointed_training_match_padded(first_step_gradients, model_path, tmp_path, layout):
    # All 8 rows in one micro-batch in every layout (at most 8 packed rows of 256 tokens), so the
    # first step sees the same tokens whatever their order: the gradients must agree.
    padded = _sft_first_step_gradients(first_step_gradients, model_path, tmp_path / "padded", batch=8, accumulation=1, max_length=256)
    other = _sft_first_step_gradients(first_step_gradients, model_path, tmp_path / "other", batch=8, accumulation=1, max_length=256, **layout)
    assert_tensors_close_to_scale(other, padded)


def _final_weights(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_resume_after_kill_matches_uninterrupted_run(model_path, tmp_path, kill_at):
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_epochs=2, save_steps=2, save_final_model=True)
    # 8 rows / (2 x 2) = 2 steps per epoch, 4 steps in all: the kill and the resume cross an epoch.
    SFTTrainer(model_path("llama"), _config(tmp_path / "full", **common), train_dataset=_rows()).train()
    expected = _final_weights(tmp_path / "full" / "final")

    interrupted = _config(tmp_path / "cut", **common)
    with pytest.raises(RuntimeError, match="killed at step 3"):
        SFTTrainer(model_path("llama"), interrupted, train_dataset=_rows(), callbacks=[kill_at(3)]).train()
    checkpoints = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2"]  # step 3 was trained but not saved; it is redone
    resumed = _config(tmp_path / "cut", resume_from_checkpoint="latest", **common)
    state = SFTTrainer(model_path("llama"), resumed, train_dataset=_rows()).train()
    assert (state.step, state.epoch, state.batches_in_epoch) == (4, 1, 4)  # end of the second epoch
    actual = _final_weights(tmp_path / "cut" / "final")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-7, rtol=0, msg=name)
    # and training did move the weights
    start = _final_weights(model_path("llama"))
    assert any(not torch.equal(start[n], expected[n]) for n in expected)


def test_checkpoints_rotate_and_are_complete(model_path, tmp_path):
    config = _config(tmp_path, per_device_train_batch_size=2, max_steps=4, save_steps=1, save_total_limit=2)
    SFTTrainer(model_path("llama"), config, train_dataset=_rows()).train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-2", "checkpoint-3"]  # step 4 is the end: the final save covers it
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.json").exists()
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def test_nan_loss_stops_before_the_step(model_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    with torch.no_grad():
        model.get_input_embeddings().weight[:] = float("nan")
    trainer = SFTTrainer(model, _config(tmp_path, per_device_train_batch_size=4, max_steps=3), train_dataset=_rows(), tokenizer=model_path("llama"))
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 1"):
        trainer.train()


def test_final_model_and_tokenizer_load(model_path, tmp_path):
    config = _config(tmp_path, per_device_train_batch_size=4, max_steps=1, save_final_model=True, logging_steps=1)
    trainer = SFTTrainer(model_path("llama"), config, train_dataset=_rows())
    trainer.train()
    final = Path(tmp_path) / "final"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(final).chat_template
    # the saved weights are the trained ones (gathered through accelerate's get_state_dict)
    saved, start = _final_weights(final), _final_weights(model_path("llama"))
    trained = trainer.model.state_dict()
    assert saved.keys() == trained.keys()
    for name, value in saved.items():
        torch.testing.assert_close(value, trained[name], atol=0, rtol=0, msg=name)
    assert any(not torch.equal(saved[n], start[n]) for n in saved)
    assert (Path(tmp_path) / "config.yaml").exists() and (Path(tmp_path) / "metrics.jsonl").exists()


def test_lora_trains_only_adapters(model_path, tmp_path):
    config = _config(tmp_path, per_device_train_batch_size=4, max_steps=3, use_lora=True, lora_r=4, save_final_model=True)
    trainer = SFTTrainer(model_path("llama"), config, train_dataset=_rows())
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], base[n]) for n in base)
    assert lora_b and any(not torch.equal(after[n], lora_b[n]) for n in lora_b)  # B starts at 0 and moved
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path("llama")), tmp_path / "final")
    reloaded_b = dict(reloaded.named_parameters())
    for name in lora_b:
        torch.testing.assert_close(reloaded_b[name], after[name], atol=0, rtol=0, msg=name)


def test_warns_when_one_step_would_reuse_rows(model_path, tmp_path, capsys):
    config = _config(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=1)
    SFTTrainer(model_path("llama"), config, train_dataset=_rows()).train()
    out = capsys.readouterr().out
    assert "1 micro-batch(es) per epoch per process but gradient_accumulation_steps=2" in " ".join(out.split())


def test_bf16_autocast_then_bf16_weights_in_one_process(model_path, tmp_path):
    # Two trainers with different precisions in one process (a notebook doing SFT then DPO):
    # accelerate's process-wide state would refuse the second one; both must train.
    rows = ArithmeticTask(seed=0).prompt_completion("train", 320)
    for name, precision in [("autocast", {"mixed_precision": "bf16"}), ("weights", {"model_dtype": "bfloat16", "mixed_precision": "no"})]:
        config = _config(tmp_path / name, per_device_train_batch_size=16, max_steps=20, learning_rate=3e-3, logging_steps=1, loss_mode="completion", **precision)
        trainer = SFTTrainer(model_path("llama"), config, train_dataset=rows)
        trainer.train()
        losses = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(loss) for loss in losses) and losses[-1] < 0.8 * losses[0], (name, losses)
        expected = torch.bfloat16 if "model_dtype" in precision else torch.float32
        assert next(trainer.model.parameters()).dtype == expected
        assert trainer.accelerator.mixed_precision == precision["mixed_precision"]


def test_tensorboard_receives_the_logged_metrics(model_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(tmp_path, per_device_train_batch_size=4, max_steps=2, logging_steps=1, report_to=["tensorboard"])
    SFTTrainer(model_path("llama"), config, train_dataset=_rows()).train()
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("loss")]
    assert steps == [1, 2]
    jsonl = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [event.value for event in accumulator.Scalars("loss")] == pytest.approx(jsonl, rel=1e-6)
