"""Must-show 3: packed, padding-free and padded batches of the same rows give the same per-token
log-probs, for every fixture architecture, on CPU (sdpa and eager attention)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.data.collate import Collator
from posttrain.data.packing import pack_examples
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.packing_check import check_packing_isolation
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_close_to_scale


def _examples(tokenizer, n=7):
    rows = ArithmeticTask(seed=3).conversations("train", n, turns=2)
    prepared = prepare_lm_data(rows, tokenizer, LMDataOptions(loss_mode="assistant", max_length=None))
    return [prepared.examples[i] for i in range(len(prepared.examples))]


def _per_example_logps(module, batch, owners):
    """Split a batch's (B, T) log-probs back into one 1-D tensor per example, in ``owners`` order:
    ``owners`` lists, per batch row, the lengths of the examples in it."""
    stats = module(batch["input_ids"], batch["position_ids"])
    pieces = []
    for row, lengths in enumerate(owners):
        start = 0
        for length in lengths:
            # position 0 of each example has no prediction inside the example
            pieces.append(stats.logps[row, start + 1 : start + length])
            start += length
    return pieces


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_padded(model_path, chatml, arch, attn):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch), attn_implementation=attn).eval()
    check_packing_isolation(model)
    module = TokenLogProbs(model)
    examples = _examples(chatml)
    lengths = [len(e["input_ids"]) for e in examples]
    pad = chatml.pad_token_id
    with torch.no_grad():
        padded = _per_example_logps(module, Collator("padded", pad_token_id=pad)(examples), [[n] for n in lengths])
        capacity = max(lengths) * 2
        rows = pack_examples(examples, capacity)
        assert len(rows) < len(examples)  # something really was packed together
        packed = _per_example_logps(module, Collator("packed", pad_token_id=pad)(rows), [r["seq_lengths"] for r in rows])
        free = _per_example_logps(module, Collator("padding_free", pad_token_id=pad)(examples), [lengths])
    # packed rows record the source row of each example they hold
    packed_by_row = dict(zip([source for row in rows for source in row["rows"]], packed))
    for index, expected in enumerate(padded):
        assert_close_to_scale(packed_by_row[examples[index]["row"]], expected)
        assert_close_to_scale(free[index], expected)


def test_leaking_attention_is_detected(model_path):
    """A model that ignores the packed boundaries (simulated by forwarding with a KV cache, which
    disables the packed-mask detection) must be refused."""
    model = AutoModelForCausalLM.from_pretrained(model_path("llama")).eval()
    original = model.forward

    def leaky_forward(*args, **kwargs):
        kwargs["use_cache"] = True
        return original(*args, **kwargs)

    model.forward = leaky_forward
    with pytest.raises(RuntimeError, match="attention leaks across packed examples"):
        check_packing_isolation(model)
