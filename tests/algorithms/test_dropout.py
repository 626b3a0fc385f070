"""Issue 7 must-show 9: trainers that compare two forward passes switch dropout off by default.

The GPT-2 fixture has dropout 0.1 (embeddings, attention, residuals) and the BERT classifier
0.1 (hidden, attention). With dropout on, a DPO policy equal to its reference scores
``-log sigmoid(noise)`` instead of exactly ``ln 2`` on its first step, and two forwards of the
same batch in train mode differ.
"""

from __future__ import annotations

import math

import pytest
import torch

from posttrain import testing
from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.algorithms.reward import RewardConfig, RewardTrainer
from posttrain.tasks import ArithmeticTask

TASK = ArithmeticTask(seed=3)


def _first_batch(trainer):
    source = trainer.train_source
    return source.collate_fn([source.dataset[i] for i in range(4)])


def _two_train_mode_losses(trainer):
    module = trainer.wrap_model(trainer.model)
    module.train()
    batch = _first_batch(trainer)
    if hasattr(trainer, "before_accumulation"):
        trainer.before_accumulation(module, [batch])
    first, metrics = trainer.compute_loss(module, batch)
    second, _ = trainer.compute_loss(module, batch)
    return first.item(), second.item(), {k: (m.value / m.count).item() for k, m in metrics.items()}


def _settings(tmp_path, **values):
    return dict(output_dir=str(tmp_path), progress_bar=False, logging_steps=0, per_device_train_batch_size=4, mixed_precision="no", **values)


def test_gpt2_fixture_has_dropout(model_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path("gpt2"))
    assert config.resid_pdrop == config.attn_pdrop == config.embd_pdrop == 0.1


def test_dpo_policy_equal_to_reference_scores_ln2(model_path, tmp_path):
    trainer = DPOTrainer(model_path("gpt2"), DPOConfig(**_settings(tmp_path)), train_dataset=TASK.preference_pairs("train", 8))
    first, second, metrics = _two_train_mode_losses(trainer)
    # each pair's loss is -log sigmoid(beta * 0) = ln 2; the batch sum over 4 pairs is 4 ln 2
    assert first == pytest.approx(4 * math.log(2), abs=4e-6)
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first == second


def test_dropout_stays_on_when_asked(model_path, tmp_path):
    trainer = DPOTrainer(model_path("gpt2"), DPOConfig(**_settings(tmp_path, disable_dropout=False)), train_dataset=TASK.preference_pairs("train", 8))
    first, second, _ = _two_train_mode_losses(trainer)
    assert first != pytest.approx(4 * math.log(2), abs=1e-4)  # the noise the default removes
    assert first != second


def test_kto_forwards_repeat(model_path, tmp_path):
    trainer = KTOTrainer(model_path("gpt2"), KTOConfig(**_settings(tmp_path)), train_dataset=TASK.unpaired("train", 8))
    first, second, metrics = _two_train_mode_losses(trainer)
    assert first == second
    assert metrics["rewards/chosen"] == 0.0  # policy == reference: every implicit reward is 0


def test_reward_model_forwards_repeat(tmp_path, tokenizers):
    tokenizer = tokenizers["no_template"]
    model = testing.build_sequence_classifier("bert", tokenizer)
    assert model.config.hidden_dropout_prob == 0.1
    trainer = RewardTrainer(model, RewardConfig(**_settings(tmp_path)), train_dataset=TASK.preference_pairs("train", 8), tokenizer=tokenizer)
    first, second, _ = _two_train_mode_losses(trainer)
    assert first == second
    assert all(m.p == 0.0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
