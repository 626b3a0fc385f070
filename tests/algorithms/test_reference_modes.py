"""Must-show 3 (issue 3): a frozen copy, the LoRA policy with adapters disabled, and cached
precomputed log-probs are the same reference: same DPO and KTO losses on the same batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.tasks import ArithmeticTask


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))


def _perturbed_lora(trainer):
    """Make the LoRA policy differ from its base: B matrices start at 0, so set them."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


def _losses(trainer_cls, config_cls, rows, model_path, tmp_path, mode, lora_state):
    config = config_cls(output_dir=str(tmp_path / mode), use_lora=True, lora_r=4, reference_mode=mode, progress_bar=False, logging_steps=0, per_device_train_batch_size=4, beta=0.5)
    trainer = trainer_cls(model_path("llama"), config, train_dataset=rows)
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if name in lora_state:
                parameter.copy_(lora_state[name])
    trainer.reference.release_copy()
    module = trainer.wrap_model(trainer.model)
    batch = trainer.train_source.collate_fn([trainer.train_source.dataset[i] for i in range(4)])
    if hasattr(trainer, "before_accumulation"):
        trainer.before_accumulation(module, [batch])
    loss, metrics = trainer.compute_loss(module, batch)
    return loss.item(), {k: (m.value / m.count).item() for k, m in metrics.items()}


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_three_reference_modes_agree(model_path, tmp_path, algorithm):
    task = ArithmeticTask(seed=2)
    if algorithm == "dpo":
        trainer_cls, config_cls, rows = DPOTrainer, DPOConfig, task.preference_pairs("train", 8)
    else:
        trainer_cls, config_cls, rows = KTOTrainer, KTOConfig, task.unpaired("train", 8)
    # one LoRA state shared by every mode, so the policy is identical and differs from the base
    probe = trainer_cls(model_path("llama"), config_cls(output_dir=str(tmp_path / "probe"), use_lora=True, lora_r=4, progress_bar=False), train_dataset=rows)
    lora_state = _perturbed_lora(probe)
    results = {mode: _losses(trainer_cls, config_cls, rows, model_path, tmp_path, mode, lora_state) for mode in ("model", "adapters_disabled", "precomputed")}
    base_loss, base_metrics = results["model"]
    for mode, (loss, metrics) in results.items():
        assert loss == pytest.approx(base_loss, abs=1e-5), mode
        for name in base_metrics:
            assert metrics[name] == pytest.approx(base_metrics[name], abs=1e-5), (mode, name)
    # the policy really differs from the reference, so the loss is not the trivial log 2 / 0.5
    key = "rewards/chosen"
    assert abs(base_metrics[key]) > 1e-3


def test_precomputed_reference_is_cached(model_path, tmp_path):
    rows = ArithmeticTask(seed=2).preference_pairs("train", 8)
    config = DPOConfig(output_dir=str(tmp_path / "a"), reference_mode="precomputed", progress_bar=False)
    first = DPOTrainer(model_path("llama"), config, train_dataset=rows)
    cached = list((tmp_path / "cache" / "ref_logps").glob("*.pt"))
    assert len(cached) == 1
    second = DPOTrainer(model_path("llama"), config, train_dataset=rows)
    assert first.train_source.dataset[3]["ref_logps"].tolist() == second.train_source.dataset[3]["ref_logps"].tolist()
    # different data -> a different key, a second file
    DPOTrainer(model_path("llama"), config, train_dataset=rows[:6])
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.pt"))) == 2
    # a reference from other weights -> other log-probs
    other = AutoModelForCausalLM.from_pretrained(model_path("qwen2"))
    third = DPOTrainer(other, config, train_dataset=rows, tokenizer=model_path("llama"))
    assert third.train_source.dataset[3]["ref_logps"].tolist() != first.train_source.dataset[3]["ref_logps"].tolist()


@pytest.mark.parametrize("mode", ["auto", "precomputed"])
def test_reference_free_losses_keep_no_reference(model_path, tmp_path, mode):
    rows = ArithmeticTask(seed=2).preference_pairs("train", 8)
    config = DPOConfig(output_dir=str(tmp_path / "run"), loss_type=["simpo", "nll"], loss_weights=[1.0, 0.2], reference_mode=mode, beta=2.0,
                       progress_bar=False, logging_steps=0, per_device_train_batch_size=4, max_steps=2, save_final_model=False)
    trainer = DPOTrainer(model_path("llama"), config, train_dataset=rows)
    assert trainer.reference is None
    assert "ref_logps" not in trainer.train_source.dataset[0]
    assert not (tmp_path / "cache").exists()  # nothing precomputed
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
