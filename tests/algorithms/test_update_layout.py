"""The update layout of online trainers (posttrain/algorithms/update_layout.py): the FLOP count
that ``auto`` ranks layouts by, worked out by hand; which layouts apply; and ``measure``, which
times them without touching gradients or random numbers and keeps its choice across a resume."""

from __future__ import annotations

import pytest
import torch
from test_grpo import _config  # GRPO's small test configuration

from posttrain.algorithms.grpo import GRPOTrainer
from posttrain.algorithms.update_layout import ModelShape, applicable_layouts, layout_costs
from posttrain.errors import ConfigError

SHAPE = ModelShape(linear_parameters=1000, attention_width=10, layers=2)  # 2 FLOPs x 1000 per slot, 80 per pair


def test_layout_costs_by_hand():
    # two prompts of 4 tokens, each with two completions of 6 and 2 tokens: sequences 10, 6, 10, 6
    prompts, completions = [4, 4, 4, 4], [6, 2, 6, 2]
    costs = layout_costs(prompts, completions, distinct_prompts=2, capacity=16, shape=SHAPE)
    # padded: 4 rows x 10 slots, causal pairs 4 x 100 / 2
    assert costs["padded"] == 2000 * 40 + 80 * 200
    # packed into 16: best fit decreasing gives [10, 6] [10, 6]: 2 rows x 16 slots, masked: 2 x 256 pairs
    assert costs["packed"] == 2000 * 32 + 80 * 512
    # prompt groups: 2 prompts x 4 + 4 completions x 6 slots; pairs 2 x 16 + 4 x 6 x (4 + 6)
    assert costs["prompt_groups"] == 2000 * 32 + 80 * (32 + 240)
    # rows of one sequence each are packed without a mask: causal pairs
    alone = layout_costs([4, 4], [6, 6], distinct_prompts=1, capacity=10, shape=SHAPE, layouts=("packed",))
    assert alone == {"packed": 2000 * 20 + 80 * 100}


def test_model_shape_counts_the_matmul_weights(model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    shape = ModelShape.of(model)
    config = model.config
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters() if p.dim() >= 2)
    assert shape == ModelShape(per_layer * config.num_hidden_layers, config.num_attention_heads * config.head_dim, config.num_hidden_layers)


def _trainer(model_path, config):
    from posttrain.tasks import ArithmeticTask

    return GRPOTrainer(model_path("llama"), config, train_dataset=ArithmeticTask(seed=5).prompt_only("train", 8),
                       reward_funcs=[lambda completions: [float(len(c)) for c in completions]])


def test_which_layouts_apply(model_path, tmp_path):
    assert applicable_layouts(_trainer(model_path, _config(tmp_path, "a")))[0] == ["packed", "padded", "prompt_groups"]
    assert applicable_layouts(_trainer(model_path, _config(tmp_path, "b", packing=False)))[0] == ["padded", "prompt_groups"]
    layouts, notes = applicable_layouts(_trainer(model_path, _config(tmp_path, "c", gradient_checkpointing=True)))
    assert layouts == ["packed", "padded"]
    assert notes == ["update layout prompt_groups does not apply (gradient checkpointing turns transformers' cache off in training)"]
    named = _trainer(model_path, _config(tmp_path, "d", update_layout="prompt_groups", gradient_checkpointing=True))
    with pytest.raises(ConfigError, match="update_layout='prompt_groups' cannot be used: gradient checkpointing"):
        applicable_layouts(named)


def test_measure_leaves_gradients_and_sampling_alone_and_is_kept_across_a_resume(model_path, tmp_path, first_step_gradients, monkeypatch):
    auto = _trainer(model_path, _config(tmp_path, "auto", save_steps=1))
    expected = first_step_gradients(auto.train)
    measured = _trainer(model_path, _config(tmp_path, "measure", update_layout="measure", save_steps=1))
    torch.testing.assert_close(first_step_gradients(measured.train), expected, rtol=1e-4, atol=1e-5 * max(g.abs().max() for g in expected.values()))
    chosen = measured.buffer.layout
    assert chosen in ("packed", "padded", "prompt_groups")
    # the second generation batch was sampled from the same random numbers (timing drew none)
    completions = [[c.token_ids for c in t.buffer.experience.samples.completions] for t in (auto, measured)]
    assert completions[0] == completions[1]
    # resumed from the step-1 checkpoint, the run keeps the layout it measured
    checkpoint = str(tmp_path / "measure" / "checkpoints" / "checkpoint-1")
    resumed = _trainer(model_path, _config(tmp_path, "resumed", update_layout="measure", resume_from_checkpoint=checkpoint))

    def measured_again(*args):
        raise AssertionError("a resumed run measured the layouts again")

    monkeypatch.setattr("posttrain.algorithms.online.measured_layout", measured_again)
    resumed.train()
    assert resumed.buffer.layout == chosen
