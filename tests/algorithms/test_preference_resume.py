"""DPO and KTO resumed from a checkpoint end with the weights of an uninterrupted run: the
reference stays the starting policy (not the checkpoint's weights), and KTO's partners and z0
windows are rebuilt identically."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.tasks import ArithmeticTask


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("mode", ["model", "precomputed"])
@pytest.mark.parametrize(("trainer_cls", "config_cls"), [(DPOTrainer, DPOConfig), (KTOTrainer, KTOConfig)])
def test_resume_after_kill_matches_uninterrupted_run(model_path, tmp_path, kill_at, trainer_cls, config_cls, mode):
    task = ArithmeticTask(seed=7)
    rows = task.preference_pairs("train", 8) if trainer_cls is DPOTrainer else task.unpaired("train", 8)

    def config(name, **extra):
        return config_cls(
            output_dir=str(tmp_path / name), per_device_train_batch_size=2, gradient_accumulation_steps=2, num_epochs=2,
            save_steps=2, learning_rate=1e-3, beta=0.5, reference_mode=mode, ref_logps_cache_dir=str(tmp_path / "cache"),
            lr_scheduler="constant", progress_bar=False, logging_steps=0, **extra,
        )

    trainer_cls(model_path("llama"), config("full"), train_dataset=rows).train()
    with pytest.raises(RuntimeError, match="killed at step 3"):
        trainer_cls(model_path("llama"), config("cut"), train_dataset=rows, callbacks=[kill_at(3)]).train()
    trainer_cls(model_path("llama"), config("cut", resume_from_checkpoint="latest"), train_dataset=rows).train()
    expected, actual = _weights(tmp_path / "full" / "final"), _weights(tmp_path / "cut" / "final")
    start = _weights(model_path("llama"))
    assert any(not torch.equal(expected[n], start[n]) for n in expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
