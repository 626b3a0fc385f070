"""``torch_compile`` (issue 9, must-show 1): compiled transformer blocks and a compiled log-prob
head give the eager run's first loss and gradients. Compiling on CPU takes about a minute, so the
trainer-level check is marked slow; the block discovery is checked in the default run."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.models.compile import compile_blocks
from posttrain.models.loading import transformer_blocks
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale


def test_blocks_are_the_decoder_layers(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    blocks = transformer_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    assert {type(b).__name__ for b in blocks} == {"LlamaDecoderLayer"}
    with pytest.raises(ValueError, match="torch_compile"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.slow
def test_compiled_first_step_equals_eager(sft_first_step, tmp_path):
    rows = ArithmeticTask(seed=3).conversations("train", 6, turns=2)
    eager = sft_first_step(tmp_path / "eager", rows)
    compiled = sft_first_step(tmp_path / "compiled", rows, torch_compile=True)
    # fused kernels reorder float32 sums: equal to rounding, not bit for bit
    assert_tensors_close_to_scale(compiled, eager)
