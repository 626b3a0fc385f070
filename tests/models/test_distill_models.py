"""The model side of distillation: the student module's divergence at scored positions equals
the one computed from both models' full logits (gradients included), teacher == student gives
0, and tokenizers that differ are refused with both sizes and the first differing token."""

from __future__ import annotations

import copy

import pytest
import torch

from posttrain.data.collate import Collator
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions
from posttrain.errors import ModelError
from posttrain.losses.distill import DivergenceOptions, divergence_from_logits
from posttrain.models.distill import DistillationStudent, check_same_vocabulary, freeze_teacher, teacher_states
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_close_to_scale, assert_tensors_close_to_scale, build_causal_lm

NARROW = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "max_positions": 256}


def _batch(tokenizer, layout="padded"):
    rows = ArithmeticTask(seed=3).prompt_completion("train", 5)
    examples = list(prepare_lm_data(rows, tokenizer, LMDataOptions(loss_mode="completion", max_length=None)).examples)
    return Collator(layout, pad_token_id=tokenizer.pad_token_id)(examples)


def _inputs(batch):
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "attention_mask": batch.get("attention_mask")}


def _naive(student_model, teacher_model, batch, options):
    """Both models' full (B, T, V) logits, then the divergence at the trained positions."""
    inputs = _inputs(batch)
    positions = batch["trained_positions"]
    student_logits = student_model(**inputs).logits
    with torch.no_grad():
        teacher_logits = teacher_model(**inputs).logits
    pick = lambda logits: logits.reshape(-1, logits.shape[-1]).index_select(0, positions - 1)  # noqa: E731
    return divergence_from_logits(pick(student_logits), pick(teacher_logits), with_stats=True, **options)


def _grads(model):
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("chunk_size", [0, 7])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_student_divergence_equals_full_logits_computation(chatml, layout, chunk_size, beta):
    student_model = build_causal_lm("llama", chatml, size=NARROW, seed=1)
    teacher_model = build_causal_lm("llama", chatml, size="tiny", seed=2)  # wider and deeper
    teacher = freeze_teacher(teacher_model)
    student = DistillationStudent(student_model, chunk_size=chunk_size)
    batch = _batch(chatml, layout)
    positions = batch["trained_positions"]
    assert 0 < positions.numel() < batch["input_ids"].numel() // 2  # prompts and pads are skipped
    options = {"beta": beta, "temperature": 0.9}

    states, head = teacher_states(teacher, _inputs(batch), positions)
    assert not states.requires_grad
    stats = student(**_inputs(batch), positions=positions, teacher_states=states, teacher_head=head, options=DivergenceOptions(**options), with_stats=True)
    stats.divergence.sum().backward()
    lean_grads = _grads(student_model)

    naive = _naive(student_model, teacher_model, batch, options)
    naive.divergence.sum().backward()
    naive_grads = _grads(student_model)

    assert_close_to_scale(stats.divergence, naive.divergence.detach())
    assert_close_to_scale(stats.student_entropy, naive.student_entropy)
    assert_close_to_scale(stats.teacher_entropy, naive.teacher_entropy)
    assert torch.equal(stats.agreement, naive.agreement)
    assert_tensors_close_to_scale(lean_grads, naive_grads)
    assert all(p.grad is None and not p.requires_grad for p in teacher_model.parameters())


def test_teacher_equal_to_student_gives_zero_divergence_and_gradient(chatml):
    student_model = build_causal_lm("llama", chatml, size="tiny", seed=4)
    teacher = freeze_teacher(copy.deepcopy(student_model))
    student = DistillationStudent(student_model, chunk_size=5)
    batch = _batch(chatml)
    positions = batch["trained_positions"]
    states, head = teacher_states(teacher, _inputs(batch), positions)
    for beta in (0.0, 0.5, 1.0):
        stats = student(**_inputs(batch), positions=positions, teacher_states=states, teacher_head=head, options=DivergenceOptions(beta))
        stats.divergence.sum().backward()
        grads = _grads(student_model)
        # The same weights and inputs give the same logits: every term is p * 0.
        assert stats.divergence.abs().max().item() <= 1e-6
        assert max(g.abs().max().item() for g in grads.values()) <= 1e-6


class _Vocabulary:
    """The two methods check_same_vocabulary reads, over a list of token strings."""

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def __len__(self):
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


def test_same_vocabulary_passes(chatml):
    assert check_same_vocabulary(chatml, copy.deepcopy(chatml)) == len(chatml)


def test_added_token_is_named_with_both_sizes(chatml):
    teacher_tokenizer = copy.deepcopy(chatml)
    teacher_tokenizer.add_tokens(["<extra_teacher_token>"])
    size = len(chatml)
    with pytest.raises(ModelError, match=rf"student {size} tokens, teacher {size + 1}; first difference at id {size}: student \(none\), teacher '<extra_teacher_token>'"):
        check_same_vocabulary(chatml, teacher_tokenizer)


def test_same_size_different_token_is_named():
    student, teacher = _Vocabulary(["a", "b", "c", "d"]), _Vocabulary(["a", "b", "x", "d"])
    with pytest.raises(ModelError, match=r"student 4 tokens, teacher 4; first difference at id 2: student 'c', teacher 'x'"):
        check_same_vocabulary(student, teacher)


def test_lora_teachers_run_on_merged_weights(model_path, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from posttrain.models.loading import load_causal_lm

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path("llama")), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 9, 14, 3, 7, 22, 8]])
    with torch.no_grad():
        expected = peft_model.eval()(ids).logits  # base + adapters, computed unmerged
        for source in (copy.deepcopy(peft_model), load_causal_lm(str(tmp_path / "adapter"))):  # a peft object, an adapter directory
            teacher = freeze_teacher(source)
            adapters = [m for m in teacher.model.modules() if hasattr(m, "merged")]
            assert all(m.merged for m in adapters)  # no adapter computation left in the forward
            assert not any(p.requires_grad for p in teacher.model.parameters())
            assert_close_to_scale(teacher.model(ids).logits, expected)
