"""Padding-free DPO batches (every chosen and rejected sequence in one row) and packed ones (rows
of max_length), with position ids restarting per sequence, give the padded batch's losses,
metrics and gradients."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale


def _loss_and_grads(model_path, tmp_path, rows, layout: dict, mode: str):
    config = DPOConfig(
        output_dir=str(tmp_path / f"{mode}-{sorted(layout)}"), **layout, reference_mode=mode, max_length=32,
        ref_logps_cache_dir=str(tmp_path / "cache"), loss_type=["sigmoid", "ipo", "simpo"], beta=0.5,
        progress_bar=False, logging_steps=0,
    )
    trainer = DPOTrainer(model_path("llama"), config, train_dataset=rows)
    trainer.reference.release_copy()
    with torch.no_grad():  # a policy that differs from the reference: rewards are not all 0
        generator = torch.Generator().manual_seed(0)
        for parameter in trainer.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    module = trainer.wrap_model(trainer.model)
    batch = trainer.train_source.collate_fn([trainer.train_source.dataset[i] for i in range(len(rows))])
    loss, metrics = trainer.compute_loss(module, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return batch, loss.item(), {k: (m.value / m.count).item() for k, m in metrics.items()}, grads


@pytest.mark.parametrize("layout", [{"padding_free": True}, {"packing": True}])
@pytest.mark.parametrize("mode", ["model", "precomputed"])
def test_padding_free_and_packed_match_padded(model_path, tmp_path, mode, layout):
    task = ArithmeticTask(seed=6)
    # answers of 1 to 3 digits against slips of other lengths: the rows really differ in length
    rows = task.preference_pairs("train", 6) + [{"prompt": "What is 99+9?", "chosen": " 108", "rejected": " 8"}]
    padded_batch, padded_loss, padded_metrics, padded_grads = _loss_and_grads(model_path, tmp_path, rows, {}, mode)
    free_batch, free_loss, free_metrics, free_grads = _loss_and_grads(model_path, tmp_path, rows, layout, mode)
    assert padded_batch["sequences"]["input_ids"].shape[0] == 14
    # one row, or rows of at most max_length=32 tokens holding several sequences each
    rows_used, width = free_batch["sequences"]["input_ids"].shape
    if "padding_free" in layout:
        assert rows_used == 1 and free_batch["sequences"]["input_ids"].numel() < padded_batch["sequences"]["input_ids"].numel()
    else:
        assert 2 <= rows_used < 14 and width <= 32
    assert free_loss == pytest.approx(padded_loss, abs=1e-5)
    for name, value in padded_metrics.items():
        assert free_metrics[name] == pytest.approx(value, abs=1e-5), name
    assert_tensors_close_to_scale(free_grads, padded_grads)
