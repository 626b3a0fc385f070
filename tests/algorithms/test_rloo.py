"""RLOO (posttrain.algorithms.rloo), the algorithm added by following docs/design.md's checklist:
its update is REINFORCE with leave-one-out advantages, the same gradient as GRPO's clipped
surrogate at ratio 1 with RLOO advantages and Dr. GRPO's aggregation; accumulation does not
change it; and it learns on the raw fixture."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from posttrain.algorithms.grpo import GRPOConfig, GRPOTrainer
from posttrain.algorithms.rloo import RLOOConfig, RLOOTrainer
from posttrain.errors import ConfigError
from posttrain.tasks import ArithmeticTask
from posttrain.testing import ScriptedEngine

PROMPTS = ArithmeticTask(seed=5).prompt_only("train", 8)
TEXTS = [" 1", " 22", " 7 7 7", " 333", " 4"]


def length_reward(completions):
    return [float(len(c)) for c in completions]


def _common(tmp_path, name, **values) -> dict:
    base = dict(output_dir=str(tmp_path / name), num_generations=4, per_device_train_batch_size=8, max_completion_length=8,
                learning_rate=1e-3, lr_scheduler="constant", max_steps=1, logging_steps=1, progress_bar=False, save_final_model=False,
                mixed_precision="no", seed=3, max_grad_norm=0.0)
    return {**base, **values}


def _run(trainer_cls, config, model_path, first_step_gradients):
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(model_path("llama")), TEXTS)
    trainer = trainer_cls(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=[length_reward], rollout_engine=engine)
    return first_step_gradients(trainer.train)


def _assert_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys() and any(g.abs().sum() > 0 for g in expected.values())
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, rtol=0, atol=1e-5 * float(gradient.abs().max()), msg=name)


def test_reinforce_equals_the_clipped_surrogate_at_ratio_one(model_path, tmp_path, first_step_gradients):
    rloo = _run(RLOOTrainer, RLOOConfig(**_common(tmp_path, "rloo")), model_path, first_step_gradients)
    grpo_config = GRPOConfig(**_common(tmp_path, "grpo", advantage_estimator="rloo", loss_type="dr_grpo"))
    _assert_close(rloo, _run(GRPOTrainer, grpo_config, model_path, first_step_gradients))


def test_accumulation_splits_give_the_same_gradients(model_path, tmp_path, first_step_gradients):
    whole = _run(RLOOTrainer, RLOOConfig(**_common(tmp_path, "whole")), model_path, first_step_gradients)
    split_config = RLOOConfig(**_common(tmp_path, "split", per_device_train_batch_size=2, gradient_accumulation_steps=4))
    _assert_close(_run(RLOOTrainer, split_config, model_path, first_step_gradients), whole)


def test_reference_free_and_on_policy(model_path, tmp_path):
    trainer = RLOOTrainer(model_path("llama"), RLOOConfig(**_common(tmp_path, "free")), train_dataset=PROMPTS, reward_funcs=[length_reward])
    assert trainer.reference is None
    with pytest.raises(ConfigError, match="num_iterations"):
        RLOOConfig(**_common(tmp_path, "x", num_iterations=2))
    with pytest.raises(ConfigError, match="num_generations"):
        RLOOConfig(**_common(tmp_path, "y", num_generations=1))


def test_learns_a_length_reward_from_the_raw_fixture(model_path, tmp_path, learning_seed):
    """The untrained Llama fixture, rewarded by the characters of its 8-token completions: 20
    steps of 4 prompts x 4 samples raise the mean sampled reward."""
    config = RLOOConfig(output_dir=str(tmp_path / "learns"), seed=learning_seed, learning_rate=1e-2, max_steps=20, num_generations=4,
                        per_device_train_batch_size=16, max_completion_length=8, lr_scheduler="constant", logging_steps=1,
                        progress_bar=False, save_final_model=False, mixed_precision="no")
    trainer = RLOOTrainer(model_path("llama"), config, train_dataset=ArithmeticTask(seed=1).prompt_only("train", 400), reward_funcs=[length_reward])
    trainer.train()
    rewards = [json.loads(line)["reward"] for line in (tmp_path / "learns" / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"rloo length reward: first 3 steps {first:.2f}, last 3 {last:.2f}")  # pytest -rP shows it
    # measured +25.7 to +35.0 characters (from 16.2-17.7 to 42.6-51.2) over seeds 0-4 x 1, 2 threads,
    # the same with ATEN_CPU_CAPABILITY=avx2
    assert last >= first + 10.0, rewards
