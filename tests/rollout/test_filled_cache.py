"""The static cache of generation path ``static`` (posttrain/rollout/filled_cache.py): attention
reads only the filled slots, and a forward through it gives what transformers' StaticCache (which
masks the empty slots) and the dynamic cache give. The completions of the ``static`` path against
the plain path are in test_generation_paths.py."""

from __future__ import annotations

import pytest
import torch
from test_generation_engine import _load
from transformers import DynamicCache, StaticCache

from posttrain.rollout.filled_cache import FilledStaticCache, FilledStaticLayer
from posttrain.testing import assert_close_to_scale


@pytest.fixture(scope="module")
def llama(model_path):
    return _load(model_path)


def _decode(model, cache, ids: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Logits of a prefill of ``ids`` (B, T) then ``steps`` single-token steps feeding back the argmax."""
    logits = [model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1]]
    for _ in range(steps):
        logits.append(model(input_ids=logits[-1].argmax(-1, keepdim=True), cache=cache, use_cache=True).logits[:, -1])
    return logits


def test_attention_reads_the_filled_slots_and_matches_the_other_caches(llama):
    model, _ = llama
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (3, 5))
    with torch.no_grad():
        filled = FilledStaticCache(config=model.config, max_cache_len=16)
        assert all(isinstance(layer, FilledStaticLayer) for layer in filled.layers)
        got = _decode(model, filled, ids, 6)
        static = _decode(model, StaticCache(config=model.config, max_cache_len=16), ids, 6)
        dynamic = _decode(model, DynamicCache(config=model.config), ids, 6)
    layer = filled.layers[0]
    assert layer.filled == 5 + 6 and int(layer.cumulative_length) == 11
    assert layer.get_mask_sizes(1) == (12, 0)
    keys, values = layer.update(torch.zeros(3, layer.num_heads, 1, layer.k_head_dim), torch.zeros(3, layer.num_heads, 1, layer.v_head_dim))
    assert keys.shape[2] == values.shape[2] == 12  # not the 16 slots
    for a, b, c in zip(got, static, dynamic):
        assert_close_to_scale(a, b)
        assert_close_to_scale(a, c)
    assert not filled.is_compileable  # generate must never compile a step around its changing shapes


def test_a_full_cache_refuses_more_tokens_and_reset_empties_it(llama):
    model, _ = llama
    cache = FilledStaticCache(config=model.config, max_cache_len=4)
    with torch.no_grad():
        model(input_ids=torch.ones(1, 4, dtype=torch.long), cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="holds 4 tokens; 4 are filled and 1 more"):
            model(input_ids=torch.ones(1, 1, dtype=torch.long), cache=cache, use_cache=True)
    cache.reset()
    assert all(layer.filled == 0 for layer in cache.layers)
