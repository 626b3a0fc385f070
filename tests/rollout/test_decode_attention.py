"""Decoding attention on CPU (posttrain/rollout/decode_attention.py): the same values as SDPA to
float32 rounding, for multi-head and grouped-query attention, with and without a padding mask;
every call it does not implement goes to SDPA unchanged; ``decoding_attention`` switches a model
to it around generation and back, and the static path's decoding steps go through it."""

from __future__ import annotations

import pytest
import torch
from test_generation_engine import PROMPTS, _load
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface

from posttrain.rollout import HFGenerationEngine, SamplingOptions, encode_prompts
from posttrain.rollout.decode_attention import DECODE_ATTENTION, decode_attention, decoding_attention
from posttrain.testing import assert_close_to_scale


class _Attention(torch.nn.Module):
    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True


def _inputs(heads: int, kv_heads: int, queries: int = 1, length: int = 9, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(3, heads, queries, 16, generator=generator)
    key, value = (torch.randn(3, kv_heads, length, 16, generator=generator) for _ in range(2))
    mask = torch.ones(3, 1, queries, length, dtype=torch.bool)
    mask[0, :, :, :4] = False  # a left-padded row
    return _Attention(heads, kv_heads), query, key, value, mask


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("masked", [True, False])
def test_one_query_row_matches_sdpa(heads, kv_heads, masked):
    module, query, key, value, mask = _inputs(heads, kv_heads)
    mask = mask if masked else None
    got, weights = decode_attention(module, query, key, value, mask, scaling=0.3)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert weights is None and got.shape == expected.shape == (3, 1, heads, 16)
    assert_close_to_scale(got, expected)


def test_calls_it_does_not_implement_go_to_sdpa_unchanged():
    module, query, key, value, mask = _inputs(4, 2, queries=5)  # a prefill: five query rows
    mask = mask & torch.ones(5, 9, dtype=torch.bool).tril(4)
    assert torch.equal(decode_attention(module, query, key, value, mask)[0], sdpa_attention_forward(module, query, key, value, mask)[0])
    module, query, key, value, mask = _inputs(4, 2)
    torch.manual_seed(0)
    expected = sdpa_attention_forward(module, query, key, value, mask, dropout=0.5)[0]
    torch.manual_seed(0)
    assert torch.equal(decode_attention(module, query, key, value, mask, dropout=0.5)[0], expected)
    with pytest.raises(ValueError, match="softcap"):  # SDPA's own refusal of an option it lacks
        decode_attention(module, query, key, value, mask, softcap=30.0)


def test_the_switch_is_restored_and_skips_models_it_does_not_apply_to(model_path):
    model, _ = _load(model_path)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"):
        with decoding_attention(model):
            assert model.config._attn_implementation == DECODE_ATTENTION
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    try:
        with decoding_attention(model):
            assert model.config._attn_implementation == "eager"  # only SDPA models are switched
    finally:
        model.set_attn_implementation("sdpa")


def test_the_static_path_decodes_through_it(model_path, monkeypatch):
    model, tokenizer = _load(model_path)
    query_rows = []

    def spy(module, query, *args, **kwargs):
        query_rows.append(query.shape[2])
        return decode_attention(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, DECODE_ATTENTION, spy)
    engine = HFGenerationEngine(model, tokenizer, path="static")
    engine.generate(encode_prompts(tokenizer, PROMPTS), SamplingOptions(max_completion_length=5, do_sample=False), num_generations=2)
    layers = model.config.num_hidden_layers
    assert query_rows.count(1) >= 4 * layers  # at least four decoding steps in every layer
    assert model.config._attn_implementation == "sdpa"  # switched back after generate
