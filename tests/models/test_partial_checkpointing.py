"""``gradient_checkpointing_fraction``: only the first share of the blocks is recomputed, the
gradients are exact whatever the share, and the activations kept fall with it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import enable_activation_checkpointing
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale


def _checkpointed(model) -> list[bool]:
    return [layer.gradient_checkpointing for layer in model.model.layers]


def _saved_bytes(model) -> int:
    """Bytes of the tensors one training forward keeps for backward (checkpoint inputs included,
    parameters excluded)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, model.config.vocab_size, (2, 48))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        TokenLogProbs(model)(ids, torch.arange(48).expand(2, -1)).logps.sum().backward()
    return sum(seen.values())


def test_the_first_share_of_blocks_is_checkpointed(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    layers = model.config.num_hidden_layers
    assert layers >= 2
    assert enable_activation_checkpointing(model, 0.5) == -(-layers // 2)
    assert _checkpointed(model) == [i < -(-layers // 2) for i in range(layers)]
    assert enable_activation_checkpointing(model) == layers and all(_checkpointed(model))


def test_activations_kept_fall_with_the_share(model_path):
    sizes = []
    for fraction in (None, 0.5, 1.0):
        model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
        if fraction is not None:
            enable_activation_checkpointing(model, fraction)
        sizes.append(_saved_bytes(model))
    assert sizes[0] > sizes[1] > sizes[2], sizes


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_partial_checkpointing_leaves_the_gradients_exact(sft_first_step, tmp_path, fraction):
    rows = ArithmeticTask(seed=4).conversations("train", 6, turns=2)
    plain = sft_first_step(tmp_path / "plain", rows)
    partial = sft_first_step(tmp_path / "partial", rows, gradient_checkpointing=True, gradient_checkpointing_fraction=fraction)
    assert_tensors_close_to_scale(partial, plain)
