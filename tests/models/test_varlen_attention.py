"""The variable-length attention path (issue 9, must-show 1).

``torch_varlen`` hands packed rows to PyTorch's FlashAttention varlen kernel, which exists on
CUDA only. On CPU the kernel is replaced by a reference with the same contract (causal attention
inside each ``cu_seqlens`` segment, grouped key/value heads), so these tests check everything of
ours around it: the boundaries, the reshapes, the dtype handling, the fallback to sdpa for
generation, and that the start-up packing probe still catches a kernel that leaks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from posttrain.data.collate import Collator
from posttrain.data.packing import pack_examples
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions
from posttrain.errors import ConfigError
from posttrain.models import attention
from posttrain.models.attention import attention_problem, register_torch_varlen, sequence_boundaries, varlen_kwargs
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import prepare_attention
from posttrain.models.packing_check import check_packing_isolation
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_close_to_scale, assert_tensors_close_to_scale


def reference_varlen(query, key, value, cu_seqlens, max_length, scale):
    """Causal attention within each segment: ``(N, Hq, D)`` queries, ``(N, Hkv, D)`` keys/values."""
    groups = query.shape[1] // key.shape[1]
    pieces = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        assert end - start <= max_length
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
        pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(pieces)


def leaky_varlen(query, key, value, cu_seqlens, max_length, scale):
    """A broken kernel that ignores the boundaries (one causal sequence over everything)."""
    whole = torch.tensor([0, query.shape[0]], dtype=cu_seqlens.dtype)
    return reference_varlen(query, key, value, whole, query.shape[0], scale)


@pytest.fixture
def cpu_varlen(monkeypatch):
    """Registers torch_varlen with the CPU reference kernel; returns the segment counts of its calls."""
    register_torch_varlen()
    calls = []

    def counted(query, key, value, cu_seqlens, *rest):
        calls.append(len(cu_seqlens) - 1)
        return reference_varlen(query, key, value, cu_seqlens, *rest)

    monkeypatch.setitem(attention.KERNEL, "varlen", counted)
    return calls


def _packed_batch(tokenizer):
    rows = ArithmeticTask(seed=8).conversations("train", 7, turns=2)
    examples = list(prepare_lm_data(rows, tokenizer, LMDataOptions(loss_mode="assistant", max_length=None)).examples)
    packed = pack_examples(examples, 2 * max(len(e["input_ids"]) for e in examples))
    assert len(packed) < len(examples)
    return Collator("packed", pad_token_id=tokenizer.pad_token_id)(packed)


def test_sequence_boundaries_of_packed_rows():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    cu_seqlens, longest = sequence_boundaries(position_ids)
    # row 0: 3 + 2 + 1 tokens; row 1 starts a sequence at its first token whatever it holds
    assert cu_seqlens.tolist() == [0, 3, 5, 6, 10, 12] and cu_seqlens.dtype == torch.int32
    assert longest == 4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: 4 query heads share 2 key/value heads
def test_varlen_path_equals_sdpa_on_packed_rows(model_path, chatml, cpu_varlen, arch):
    sdpa = AutoModelForCausalLM.from_pretrained(model_path(arch), attn_implementation="sdpa").eval()
    varlen = AutoModelForCausalLM.from_pretrained(model_path(arch), attn_implementation="torch_varlen").eval()
    assert varlen_kwargs(varlen, torch.tensor([[0, 1, 0]]))["cu_seq_lens_q"].tolist() == [0, 2, 3]
    assert varlen_kwargs(sdpa, torch.tensor([[0, 1, 0]])) == {}
    check_packing_isolation(varlen, batch_rows=2)

    batch = _packed_batch(chatml)
    weights = batch["loss_weights"]
    results = []
    for model in (sdpa, varlen):
        stats = TokenLogProbs(model)(batch["input_ids"], batch["position_ids"], positions=batch["trained_positions"])
        (-(stats.logps * weights).sum()).backward()
        results.append((stats.logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (expected, expected_grads), (actual, actual_grads) = results
    layers = varlen.config.num_hidden_layers
    # every layer ran the kernel, with each of the 7 examples (and any row's padding) its own segment
    assert len(cpu_varlen) >= layers and len(set(cpu_varlen[-layers:])) == 1 and cpu_varlen[-1] >= 7
    assert_close_to_scale(actual, expected)
    assert_tensors_close_to_scale(actual_grads, expected_grads)


def test_generation_falls_back_to_sdpa(model_path, chatml, cpu_varlen, monkeypatch):
    """With a KV cache (queries shorter than keys) or a padding mask the varlen kernel is not
    used: generation with torch_varlen gives sdpa's tokens."""
    calls = []
    monkeypatch.setitem(attention.KERNEL, "varlen", lambda *a: calls.append(1) or reference_varlen(*a))
    prompts = chatml(["12+30=", "7+5="], return_tensors="pt", padding=True, padding_side="left")
    outputs = []
    for attn in ("sdpa", "torch_varlen"):
        model = AutoModelForCausalLM.from_pretrained(model_path("llama"), attn_implementation=attn).eval()
        outputs.append(model.generate(**prompts, max_new_tokens=6, do_sample=False, pad_token_id=chatml.pad_token_id))
    assert torch.equal(outputs[0], outputs[1])
    assert not calls  # a padded prompt batch and the cached steps both went to sdpa


def test_packing_probe_catches_a_leaking_kernel(model_path, cpu_varlen, monkeypatch):
    monkeypatch.setitem(attention.KERNEL, "varlen", leaky_varlen)
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"), attn_implementation="torch_varlen").eval()
    with pytest.raises(RuntimeError, match="attention leaks across packed examples"):
        check_packing_isolation(model, batch_rows=2)


def test_half_precision_inputs_for_the_kernel():
    x = torch.randn(3, 2, 4)
    assert attention._half_precision(x, x)[0].dtype == torch.float32  # fp32 without autocast: as given
    assert all(t.dtype == torch.bfloat16 for t in attention._half_precision(x, x.bfloat16()))  # rotary upcast q/k
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(t.dtype == torch.bfloat16 for t in attention._half_precision(x, x))


def test_unusable_kernels_are_refused_with_the_fix():
    problem = attention_problem("torch_varlen", "cpu")
    assert "CUDA" in problem and "sdpa" in problem
    assert attention_problem("sdpa", "cpu") is None
    assert "backward" in attention_problem("flex_attention", "cpu")  # it cannot train on CPU
    if attention_problem("flash_attention_2", "cuda") is not None:  # flash-attn not installed
        assert "flash_attn" in attention_problem("flash_attention_2", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="attn_implementation.*torch_varlen"):
            prepare_attention("torch_varlen")
