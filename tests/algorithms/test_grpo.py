"""GRPOTrainer: invariants of the update on fixed (scripted) experience, the experience buffer,
dynamic sampling, the completion log, exact resume and clear errors (issue 7 must-shows 3, 5,
6, 8).

Scripted completions (``posttrain.testing.ScriptedEngine``) make the experience independent of
how a run splits it, so two runs can be compared gradient for gradient; the resume test samples
from the model, so it also checks that the sampling RNG is restored."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.grpo import GRPOConfig, GRPOTrainer
from posttrain.data.errors import DataFormatError
from posttrain.rollout import RewardFunctionError
from posttrain.tasks import ArithmeticTask
from posttrain.testing import ScriptedEngine, assert_tensors_close_to_scale

TASK = ArithmeticTask(seed=5)
PROMPTS = TASK.prompt_only("train", 8)
# completions of different lengths and rewards; the answer column makes some exactly right
TEXTS = [" 1", " 22", " 7 7 7", " 333", " 4"]


def length_reward(completions):
    """A reward that varies inside every group: the completion's length in characters."""
    return [float(len(c)) for c in completions]


def ends_with_seven(completions, answer):
    return [1.0 if c.strip().endswith("7") else 0.0 for c in completions]


def _config(tmp_path, name="run", **values) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path / name), num_generations=4, per_device_train_batch_size=8, max_completion_length=8,
        learning_rate=1e-3, lr_scheduler="constant", max_steps=2, logging_steps=1, progress_bar=False,
        save_final_model=False, mixed_precision="no", seed=3,
    )
    return GRPOConfig(**{**base, **values})


def _trainer(model_path, config, engine_texts=TEXTS, reward_funcs=(length_reward, ends_with_seven), rows=PROMPTS, **kwargs):
    if engine_texts is not None:
        kwargs["rollout_engine"] = ScriptedEngine(AutoTokenizer.from_pretrained(model_path("llama")), engine_texts)
    return GRPOTrainer(model_path("llama"), config, train_dataset=rows, reward_funcs=list(reward_funcs), **kwargs)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_accumulation_splits_give_the_same_gradients(model_path, tmp_path, first_step_gradients, loss_type):
    # must-show 3: 8 completions as 1 micro-batch of 8 or 4 micro-batches of 2
    whole = _trainer(model_path, _config(tmp_path, "whole", loss_type=loss_type))
    split = _trainer(model_path, _config(tmp_path, "split", loss_type=loss_type, per_device_train_batch_size=2, gradient_accumulation_steps=4))
    expected, actual = first_step_gradients(whole.train), first_step_gradients(split.train)
    assert_tensors_close_to_scale(actual, expected)


def test_packed_padded_and_prompt_group_updates_agree(model_path, tmp_path, first_step_gradients):
    packed = first_step_gradients(_trainer(model_path, _config(tmp_path, "packed", update_layout="packed")).train)
    padded = first_step_gradients(_trainer(model_path, _config(tmp_path, "padded", packing=False)).train)
    assert_tensors_close_to_scale(packed, padded)
    # each prompt run once for its 4 completions (PROMPTS have different lengths: left-padded prompts)
    grouped = _trainer(model_path, _config(tmp_path, "grouped", update_layout="prompt_groups"))
    assert_tensors_close_to_scale(first_step_gradients(grouped.train), packed)
    assert grouped.micro_batches(grouped.buffer.experience, list(range(8)))[0].groups.prompt_ids.shape[0] == 2  # 2 prompts x 4
    # split over micro-batches that cut groups (2 completions of a prompt per micro-batch)
    split = _trainer(model_path, _config(tmp_path, "split", update_layout="prompt_groups", per_device_train_batch_size=2, gradient_accumulation_steps=4))
    assert_tensors_close_to_scale(first_step_gradients(split.train), packed)


def test_first_of_several_iterations_equals_a_single_pass(model_path, tmp_path, first_step_gradients):
    """With num_iterations=2 the old log-probs are computed at rollout time; on the first step
    they equal the current ones, so the step is the one-pass step (ratio 1)."""
    one = first_step_gradients(_trainer(model_path, _config(tmp_path, "one")).train)
    two = first_step_gradients(_trainer(model_path, _config(tmp_path, "two", num_iterations=2)).train)
    assert_tensors_close_to_scale(two, one)


def test_generation_batch_serves_num_iterations_steps(model_path, tmp_path):
    trainer = _trainer(model_path, _config(tmp_path, max_steps=4, num_iterations=2))
    trainer.train()
    assert trainer.engine.calls == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [("reward" in r) for r in records] == [True, False, True, False]
    assert records[1]["clip_ratio/low_mean"] + records[1]["clip_ratio/high_mean"] >= 0  # the second pass has ratios != 1
    assert records[0]["clip_ratio/low_mean"] == records[0]["clip_ratio/high_mean"] == 0.0


def test_kl_term_is_zero_and_gradient_free_at_the_reference(model_path, tmp_path, first_step_gradients):
    plain = first_step_gradients(_trainer(model_path, _config(tmp_path, "plain")).train)
    with_kl = _trainer(model_path, _config(tmp_path, "kl", beta=0.5))
    assert with_kl.reference.model is not None
    anchored = first_step_gradients(with_kl.train)
    assert_tensors_close_to_scale(anchored, plain)
    first = json.loads((tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)


def test_no_reference_model_without_kl(model_path, tmp_path):
    trainer = _trainer(model_path, _config(tmp_path))
    assert trainer.reference is None


def test_dynamic_sampling_replaces_groups_without_signal(model_path, tmp_path):
    # a reward equal for every completion of some prompts: those groups teach nothing
    def constant_for_even_answers(completions, answer):
        return [0.0 if int(a) % 2 == 0 else float(len(c)) for c, a in zip(completions, answer)]

    config = _config(tmp_path, dynamic_sampling=True, max_steps=1, max_sampling_rounds=3)
    trainer = _trainer(model_path, config, reward_funcs=[constant_for_even_answers])
    trainer.train()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    odd = sum(int(row["answer"]) % 2 for row in PROMPTS)
    assert 0 < odd < len(PROMPTS)
    assert record["dynamic_sampling/rounds"] >= 2
    assert record["dynamic_sampling/dropped_groups"] > 0
    assert record["frac_reward_zero_std"] == pytest.approx(record["dynamic_sampling/filled_without_signal"] / 2)


def test_completion_log_at_its_interval(model_path, tmp_path):
    # must-show 5: console panels, completions.jsonl and TensorBoard get the same rows
    config = _config(tmp_path, max_steps=5, log_completions_steps=2, num_completions_to_print=3, report_to=["tensorboard"])
    trainer = _trainer(model_path, config)
    buffer = io.StringIO()
    trainer.completion_log.console = Console(file=buffer, width=200, force_terminal=False)
    trainer.train()
    text = buffer.getvalue()
    assert text.count("completions at step") == 2
    assert "completions at step 2" in text and "completions at step 4" in text
    assert "3 of 8 rows" in text
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [2, 4] and len(rows) == 16
    assert {"prompt", "completion", "reward", "length_reward", "ends_with_seven", "advantage"} <= set(rows[0])
    assert all(r["reward"] == pytest.approx(r["length_reward"] + r["ends_with_seven"]) for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_file = next((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    events = EventAccumulator(str(event_file.parent), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("completions/text_summary")
    assert [t.step for t in texts] == [2, 4]
    table = texts[0].tensor_proto.string_val[0].decode()
    assert rows[0]["completion"] in table and "length_reward" in table


def test_resume_after_kill_matches_uninterrupted_run(model_path, tmp_path, killed_and_resumed):
    # must-show 6, sampling from the model: the checkpoint restores the RNG, and (with two
    # iterations per generation batch and a checkpoint between them) the experience buffer
    def run(name, callbacks=(), **options):
        config = _config(tmp_path, name, max_steps=6, num_iterations=2, save_steps=3, temperature=1.5, max_completion_length=6, **options)
        return GRPOTrainer(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=[length_reward], callbacks=list(callbacks))

    expected, actual = killed_and_resumed(run, 4)
    start = AutoModelForCausalLM.from_pretrained(model_path("llama")).state_dict()
    assert any(not torch.equal(expected[n], start[n]) for n in expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)


# ----------------------------------------------------------------------------- errors (must-show 8)


def test_missing_column_fails_before_generation(model_path, tmp_path):
    def needs_solution(completions, solution):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="reward function 'needs_solution' needs the column 'solution'"):
        _trainer(model_path, _config(tmp_path), reward_funcs=[needs_solution])


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda completions: [1.0], "returned 1 values? for 8|1 value"),
        (lambda completions: [float("nan")] * len(completions), "NaN|nan"),
        (lambda completions: [1 / 0 for _ in completions], "ZeroDivisionError"),
    ],
)
def test_faulty_reward_function_stops_the_run_with_its_name(model_path, tmp_path, fn, message):
    fn.__name__ = "faulty"
    trainer = _trainer(model_path, _config(tmp_path), reward_funcs=[fn])
    with pytest.raises(RewardFunctionError, match="faulty") as error:
        trainer.train()
    assert any(part in str(error.value) for part in message.split("|")) or pytest.fail(str(error.value))


@pytest.mark.parametrize(
    ("rows", "field"),
    [
        ([{"prompt": "What is 1+1?"}, {"answer": "3"}], "prompt"),
        ([{"prompt": "What is 1+1?"}, {"prompt": ""}], "prompt"),
        ([{"prompt": "What is 1+1?"}, {"prompt": 7}], "prompt"),
    ],
)
def test_bad_prompt_rows_name_row_and_field(model_path, tmp_path, rows, field):
    with pytest.raises(DataFormatError, match=f"row 1.*{field}"):
        _trainer(model_path, _config(tmp_path), rows=rows, reward_funcs=[length_reward])


def test_group_size_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match="multiple of num_generations"):
        _config(tmp_path, num_generations=3)
