"""bfloat16 weights with float32 master copies (issue 9, must-show 1): the optimizer updates the
masters exactly as float32 AdamW would, keeps the updates bf16 cannot hold, survives a resume
bit for bit, and a bf16 run's first loss and gradients are the float32 run's within bf16 rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain import SFTConfig, SFTTrainer
from posttrain.errors import ConfigError
from posttrain.tasks import ArithmeticTask
from posttrain.train.master_weights import MasterWeightAdamW
from posttrain.train.optim import build_optimizer


def _pair_of_models(seed=0):
    """A bf16 model and a float32 model holding the same (bf16-representable) weights."""
    torch.manual_seed(seed)
    half = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(torch.bfloat16)
    full = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    return half, full


@pytest.mark.parametrize("flags", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_masters_follow_float32_adamw_exactly(flags):
    half, full = _pair_of_models()
    options = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, **flags)
    masters = MasterWeightAdamW(half.parameters(), **options)
    reference = torch.optim.AdamW(full.parameters(), **options)
    assert masters.has_masters
    for step in range(5):
        gradients = [torch.randn_like(p, dtype=torch.float32).to(torch.bfloat16) for p in half.parameters()]
        for p, q, g in zip(half.parameters(), full.parameters(), gradients):
            p.grad, q.grad = g.clone(), g.float()
        masters.step()
        reference.step()
        masters.zero_grad()
        reference.zero_grad()
        for (_, master), q, p in zip(masters._pairs, full.parameters(), half.parameters()):
            assert torch.equal(master, q.detach()), f"step {step}"
            assert torch.equal(p.detach(), q.detach().to(torch.bfloat16))  # the model holds the rounded master
            assert p.grad is None


def test_updates_below_bf16_resolution_accumulate():
    """lr 1e-4 on weights near 1: each update (~1e-4) is under half a bf16 step (2**-8 = 0.0039),
    so plain AdamW on bf16 weights never moves them; the masters do, and carry the weight."""
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    kept = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0)
    kept_opt = MasterWeightAdamW([kept], lr=1e-4, weight_decay=0.0)
    for _ in range(60):
        for parameter, optimizer in ((plain, plain_opt), (kept, kept_opt)):
            parameter.grad = torch.ones_like(parameter)
            optimizer.step()
            optimizer.zero_grad()
    assert torch.equal(plain.detach(), torch.ones(4, dtype=torch.bfloat16))  # every update was lost
    master = kept_opt._pairs[0][1]
    torch.testing.assert_close(master, torch.full((4,), 1 - 60e-4), atol=1e-5, rtol=0)  # float32 rounding of 60 steps
    assert torch.equal(kept.detach(), master.to(torch.bfloat16)) and (kept.detach() < 1).all()


def test_state_dict_round_trip_keeps_the_exact_masters():
    half, _ = _pair_of_models()
    optimizer = MasterWeightAdamW(half.parameters(), lr=1e-3)
    for _ in range(3):
        for p in half.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    saved = optimizer.state_dict()
    # a fresh process: model weights are the rounded values, masters rebuilt from them
    restored_model, _ = _pair_of_models()
    restored_model.load_state_dict(half.state_dict())
    restored = MasterWeightAdamW(restored_model.parameters(), lr=1e-3)
    restored.load_state_dict(saved)
    for (_, a), (_, b) in zip(optimizer._pairs, restored._pairs):
        assert torch.equal(a, b)
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for _, m in restored._pairs)  # not just the rounded weights


def test_optimizer_choice_follows_the_weights_dtype():
    half, full = _pair_of_models()
    config = SFTConfig(output_dir="unused", model_dtype="bfloat16")
    assert isinstance(build_optimizer(half, config), MasterWeightAdamW)
    assert type(build_optimizer(full, config)) is torch.optim.AdamW  # float32 weights: nothing to keep
    no_masters = SFTConfig(output_dir="unused", model_dtype="bfloat16", master_weights=False)
    assert type(build_optimizer(half, no_masters)) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="fp16"):
        build_optimizer(half, SFTConfig(output_dir="unused", model_dtype="bfloat16", mixed_precision="fp16"))
    # AdamW straight on float16 weights turns NaN within two steps (measured): refused
    with pytest.raises(ConfigError, match="master_weights=true"):
        build_optimizer(half.to(torch.float16), SFTConfig(output_dir="unused", model_dtype="float16", master_weights=False))


# ---------------------------------------------------------------------- through the trainer


def _rows():
    return ArithmeticTask(seed=6).conversations("train", 8, turns=2)


def _config(path, **overrides):
    values = dict(
        output_dir=str(path), learning_rate=3e-3, loss_mode="assistant", progress_bar=False, logging_steps=1,
        save_final_model=False, per_device_train_batch_size=4, max_length=None, lr_scheduler="constant",
        max_grad_norm=0.0, group_by_length=False,
    )
    values.update(overrides)
    return SFTConfig(**values)


def _first_loss(path: Path) -> float:
    import json

    lines = (path / "metrics.jsonl").read_text().splitlines()
    return next(json.loads(line)["loss"] for line in lines if "\"loss\"" in line)


def test_bf16_run_matches_float32_within_bf16_rounding(first_step_gradients, model_path, tmp_path):
    full = first_step_gradients(SFTTrainer(model_path("llama"), _config(tmp_path / "fp32", max_steps=1), train_dataset=_rows()).train)
    half = first_step_gradients(
        SFTTrainer(model_path("llama"), _config(tmp_path / "bf16", max_steps=1, model_dtype="bfloat16"), train_dataset=_rows()).train
    )
    # the fixture's float32 weights are rounded to bf16 on loading, and every matmul runs in bf16
    assert _first_loss(tmp_path / "bf16") == pytest.approx(_first_loss(tmp_path / "fp32"), rel=1e-2)
    assert full.keys() == half.keys()
    flat_full = torch.cat([g.reshape(-1) for g in full.values()])
    flat_half = torch.cat([half[n].float().reshape(-1) for n in full])
    assert all(g.dtype == torch.bfloat16 for g in half.values())
    assert torch.nn.functional.cosine_similarity(flat_full, flat_half, dim=0) > 0.99
    assert (flat_half - flat_full).norm() < 0.05 * flat_full.norm()


def test_bf16_resume_restores_the_masters(model_path, tmp_path, kill_at):
    """Killed and resumed, a bf16 run ends with the uninterrupted run's weights bit for bit: the
    optimizer checkpoint carries the float32 masters, not just the rounded weights."""
    common = dict(model_dtype="bfloat16", max_steps=4, save_steps=2, save_final_model=True)
    SFTTrainer(model_path("llama"), _config(tmp_path / "full", **common), train_dataset=_rows()).train()
    with pytest.raises(RuntimeError, match="killed at step 3"):
        SFTTrainer(model_path("llama"), _config(tmp_path / "cut", **common), train_dataset=_rows(), callbacks=[kill_at(3)]).train()
    SFTTrainer(model_path("llama"), _config(tmp_path / "cut", resume_from_checkpoint="latest", **common), train_dataset=_rows()).train()
    expected = load_file(tmp_path / "full" / "final" / "model.safetensors")
    actual = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in expected.values())
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
