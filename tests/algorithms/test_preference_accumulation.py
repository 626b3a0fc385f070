"""DPO and KTO with per-device batch 1 and gradient accumulation take the same optimizer step as
one big batch. For KTO this needs the KL reference point z0 estimated over the whole accumulated
batch (a per-micro-batch z0 from a single row would differ), which the trainer does."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale


def _rows(trainer_cls) -> list[dict]:
    task = ArithmeticTask(seed=5)
    return task.preference_pairs("train", 8) if trainer_cls is DPOTrainer else task.unpaired("train", 8)


@pytest.mark.parametrize(("trainer_cls", "config_cls"), [(DPOTrainer, DPOConfig), (KTOTrainer, KTOConfig)])
def test_batch_one_with_accumulation_matches_one_big_batch(monkeypatch, first_step_gradients, model_path, tmp_path, trainer_cls, config_cls):
    def config(batch, accumulation, name):
        return config_cls(
            output_dir=str(tmp_path / name), per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, max_steps=1, max_grad_norm=0.0, learning_rate=1e-3,
            beta=0.5, progress_bar=False, logging_steps=0, save_final_model=False,
        )

    if trainer_cls is KTOTrainer:
        # a policy that differs from the reference, so the KL estimate z0 is not clamped to 0
        monkeypatch.setattr(KTOTrainer, "train", _perturb_policy_then(KTOTrainer.train))
    big = first_step_gradients(trainer_cls(model_path("llama"), config(8, 1, "big"), train_dataset=_rows(trainer_cls)).train)
    small = first_step_gradients(trainer_cls(model_path("llama"), config(1, 8, "small"), train_dataset=_rows(trainer_cls)).train)
    assert_tensors_close_to_scale(small, big)


def _perturb_policy_then(train):
    def perturbed(self):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        return train(self)

    return perturbed
