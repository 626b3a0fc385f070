"""DistillationTrainer (posttrain.algorithms.distill): its first step is the gradient of the
token-mean divergence computed from both models' full logits; accumulation and packing do not
change it; teacher == student gives zero; the teacher stays frozen and unsaved; lmbda mixes
batches by a seeded draw; resume is exact; bad set-ups fail with one clear line."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.distill import DistillationConfig, DistillationTrainer
from posttrain.data.distill import prepare_distillation_data
from posttrain.errors import ConfigError, ModelError
from posttrain.losses.distill import divergence_from_logits
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale

ROWS = ArithmeticTask(seed=5).prompt_completion("train", 8)
PROMPTS = ArithmeticTask(seed=5).prompt_only("train", 8)
STUDENT, TEACHER = "llama", "qwen2-small"  # a tiny Llama learns from a wider, deeper Qwen2 with the same tokenizer


def _config(tmp_path, name="run", **values) -> DistillationConfig:
    base = dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=8, max_completion_length=8, learning_rate=1e-3,
        lr_scheduler="constant", max_steps=1, logging_steps=1, progress_bar=False, save_final_model=False, mixed_precision="no",
        seed=3, max_grad_norm=0.0, lmbda=0.0, beta=0.5, temperature=0.8,
    )
    return DistillationConfig(**{**base, **values})


def _trainer(model_path, config, rows=ROWS, **kwargs) -> DistillationTrainer:
    return DistillationTrainer(model_path(STUDENT), config, train_dataset=rows, teacher_model=kwargs.pop("teacher", model_path(TEACHER)), **kwargs)


def _by_suffix(gradients: dict, names) -> dict:
    """The recorded gradients keyed by the model's own parameter names (the trained module wraps it)."""
    return {name: next(g for key, g in gradients.items() if key.endswith(name)) for name in names}


def test_first_step_is_the_gradient_of_the_divergence_from_full_logits(model_path, tmp_path, first_step_gradients, chatml):
    config = _config(tmp_path, beta=0.3)
    gradients = first_step_gradients(_trainer(model_path, config).train)

    # The same step by hand: the rows' completions, both models' full (B, T, V) logits, the
    # divergence at every completion token, one token mean.
    student = AutoModelForCausalLM.from_pretrained(model_path(STUDENT))
    teacher = AutoModelForCausalLM.from_pretrained(model_path(TEACHER))
    items = prepare_distillation_data(ROWS, chatml, max_completion_length=8).items
    per_token = []
    for item in items:
        ids = torch.tensor([item["prompt_ids"] + item["completion_ids"]])
        start = len(item["prompt_ids"])
        picked = slice(start - 1, ids.shape[1] - 1)  # the states that predict the completion tokens
        with torch.no_grad():
            teacher_logits = teacher(ids).logits[0, picked]
        per_token.append(divergence_from_logits(student(ids).logits[0, picked], teacher_logits, beta=0.3, temperature=0.8).divergence)
    torch.cat(per_token).mean().backward()
    expected = {name: p.grad for name, p in student.named_parameters()}
    assert_tensors_close_to_scale(_by_suffix(gradients, expected), expected)


def test_accumulation_and_packing_give_the_same_gradients(model_path, tmp_path, first_step_gradients):
    whole = first_step_gradients(_trainer(model_path, _config(tmp_path, "whole")).train)
    split = first_step_gradients(_trainer(model_path, _config(tmp_path, "split", per_device_train_batch_size=2, gradient_accumulation_steps=4)).train)
    padded = first_step_gradients(_trainer(model_path, _config(tmp_path, "padded", packing=False)).train)
    assert_tensors_close_to_scale(split, whole)
    assert_tensors_close_to_scale(padded, whole)


def test_teacher_equal_to_student_gives_zero_loss_and_gradient(model_path, tmp_path, first_step_gradients):
    config = _config(tmp_path, lmbda=1.0, beta=1.0, logging_steps=1)
    gradients = first_step_gradients(_trainer(model_path, config, teacher=model_path(STUDENT)).train)
    # Exactly p - p * sum(p) through the log-softmax, with sum(p) = 1 up to float32 rounding:
    # measured 6.7e-10, against gradients of order 1e-1 when the teacher differs (the first test).
    assert max(g.abs().max().item() for g in gradients.values()) <= 1e-7
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["loss"] == 0.0 and record["agreement"] == 1.0 and record["on_policy"] == 1.0


def test_teacher_is_frozen_unsaved_and_unchanged(model_path, tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(model_path(TEACHER))
    before = copy.deepcopy(teacher.state_dict())
    trainer = _trainer(model_path, _config(tmp_path, max_steps=2, save_final_model=True), teacher=teacher)
    trainer.train()
    frozen = trainer.teacher.model
    assert frozen is teacher and not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(before[n], t) for n, t in teacher.state_dict().items())
    # the optimizer is built from the trained module: the teacher is not part of it
    assert not {id(p) for p in trainer.module.parameters()} & {id(p) for p in teacher.parameters()}
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert type(saved).__name__ == "LlamaForCausalLM"  # the student, not the Qwen2 teacher
    student = AutoModelForCausalLM.from_pretrained(model_path(STUDENT)).state_dict()
    assert any(not torch.equal(saved.state_dict()[n], student[n]) for n in student)


def test_lmbda_mixes_batches_by_a_seeded_draw(model_path, tmp_path):
    config = _config(tmp_path, lmbda=0.5, max_steps=8, per_device_train_batch_size=4, num_epochs=4)
    trainer = _trainer(model_path, config, rows=ROWS)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    shares = [r["on_policy"] for r in records]
    assert shares == [float(trainer.on_policy(step)) for step in range(8)]
    assert 0 < sum(shares) < 8  # both kinds happened
    always = _trainer(model_path, _config(tmp_path, "always", lmbda=1.0))
    never = _trainer(model_path, _config(tmp_path, "never", lmbda=0.0))
    assert all(always.on_policy(s) for s in range(50)) and not any(never.on_policy(s) for s in range(50))


def test_completion_log_shows_the_teachers_summed_logp(model_path, tmp_path):
    config = _config(tmp_path, lmbda=1.0, max_steps=2, log_completions_steps=2, num_completions_to_print=2)
    trainer = _trainer(model_path, config, rows=PROMPTS)
    trainer.completion_log.console = Console(file=io.StringIO(), width=200)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {2} and len(rows) == 8 and all(r["student_wrote_it"] for r in rows)
    # the teacher's summed log-prob, computed independently for one logged completion
    tokenizer = AutoTokenizer.from_pretrained(model_path(STUDENT))
    teacher = TokenLogProbs(AutoModelForCausalLM.from_pretrained(model_path(TEACHER)).eval())
    experience = trainer.buffer.experience
    prompt_ids, completion_ids = experience.samples.items[0]["prompt_ids"], list(experience.samples.completions[0].token_ids)
    with torch.no_grad():
        logps = teacher(torch.tensor([prompt_ids + completion_ids])).logps[0, len(prompt_ids) :]
    assert rows[0]["completion"] == tokenizer.decode(completion_ids, skip_special_tokens=True)
    assert rows[0]["teacher_logp"] == pytest.approx(logps.sum().item(), rel=1e-5)


def test_resume_after_kill_matches_uninterrupted_run(model_path, tmp_path, killed_and_resumed):
    # mixed batches (the on/off choice from (seed, step)) sampled at temperature 1.5: the checkpoint
    # restores the sampling RNG and the data position
    def run(name, callbacks=(), **options):
        config = _config(tmp_path, name, max_steps=6, save_steps=3, lmbda=0.5, temperature=1.5, per_device_train_batch_size=4, num_epochs=3, **options)
        return _trainer(model_path, config, callbacks=list(callbacks))

    expected, actual = killed_and_resumed(run, 4)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_lora_student_trains_only_its_adapters(model_path, tmp_path, first_step_gradients):
    config = _config(tmp_path, use_lora=True, lora_r=4, lora_alpha=8)
    gradients = first_step_gradients(_trainer(model_path, config).train)
    assert gradients and all("lora_" in name for name in gradients)
    assert any(g.abs().sum() > 0 for g in gradients.values())


# ----------------------------------------------------------------------------- errors


def test_different_tokenizer_is_refused_naming_both_sizes(model_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_path(TEACHER))
    size = len(tokenizer)
    tokenizer.add_tokens(["<teacher_only>"])
    with pytest.raises(ModelError, match=rf"student {size} tokens, teacher {size + 1}; first difference at id {size}"):
        _trainer(model_path, _config(tmp_path), teacher=AutoModelForCausalLM.from_pretrained(model_path(TEACHER)), teacher_tokenizer=tokenizer)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"beta": 1.0, "teacher_top_k": 1}, "use k >= 2"),
        ({"beta": 1.5}, "beta"),
        ({"lmbda": 0.5, "num_generations": 2}, "num_generations=2 with lmbda=0.5"),
        ({"reward_funcs": ["exact_answer"]}, "remove reward_funcs"),
    ],
)
def test_bad_options_are_refused(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **values)


def test_off_policy_batches_need_completions(model_path, tmp_path):
    with pytest.raises(ConfigError, match="lmbda=0.5 asks for off-policy batches"):
        _trainer(model_path, _config(tmp_path, lmbda=0.5), rows=PROMPTS)
    with pytest.raises(ConfigError, match="no teacher"):
        DistillationTrainer(model_path(STUDENT), _config(tmp_path), train_dataset=ROWS)


def test_tools_are_refused_not_ignored(model_path, tmp_path):
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: a number
            b: a number
        """
        return a * b

    with pytest.raises(ConfigError, match="distillation does not run multi-turn episodes yet"):
        _trainer(model_path, _config(tmp_path, lmbda=1.0), rows=PROMPTS, tools=[multiply])


def test_evaluation_scores_the_eval_rows_completions(model_path, tmp_path):
    eval_rows = ArithmeticTask(seed=6).prompt_completion("test", 4)
    trainer = _trainer(model_path, _config(tmp_path), eval_dataset=eval_rows)
    before = trainer.evaluate()
    assert set(before) == {"eval/loss", "eval/entropy", "eval/teacher_entropy", "eval/agreement"}
    assert before["eval/loss"] > 0 and trainer.evaluate() == before  # the same tokens every time
    same = _trainer(model_path, _config(tmp_path, "same"), eval_dataset=eval_rows, teacher=model_path(STUDENT)).evaluate()
    assert same["eval/loss"] == 0.0 and same["eval/agreement"] == 1.0
    prompts = _trainer(model_path, _config(tmp_path, "greedy", lmbda=1.0), rows=PROMPTS, eval_dataset=PROMPTS[:4]).evaluate()
    assert prompts["eval/loss"] > 0  # on the student's greedy completions


def test_update_layouts_leave_out_prompt_groups(model_path, tmp_path):
    # the loss runs the teacher on the micro-batch's packed or padded rows, so a layout that
    # gives only the student's per-token values cannot serve it; asked for by name, it is refused
    from posttrain.algorithms.update_layout import applicable_layouts

    layouts, notes = applicable_layouts(_trainer(model_path, _config(tmp_path, "auto", lmbda=1.0, num_generations=2), rows=PROMPTS))
    assert layouts == ["packed", "padded"]
    assert notes == ["update layout prompt_groups does not apply (the loss runs the teacher on the same packed or padded rows)"]
    named = _trainer(model_path, _config(tmp_path, "named", lmbda=1.0, num_generations=2, update_layout="prompt_groups"), rows=PROMPTS)
    with pytest.raises(ConfigError, match="update_layout='prompt_groups' cannot be used: the loss runs the teacher"):
        applicable_layouts(named)
