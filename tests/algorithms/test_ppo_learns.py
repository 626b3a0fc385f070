"""Issue 8 must-show 3: PPO learns, from the noisy start (tests/conftest.py: a model that adds
but whose greedy answer is mostly one too high).

- With the exact-match reward, held-out greedy accuracy rises by at least 30 points, and the
  critic (the default: a copy of the policy's backbone with a new value head) learns: its
  explained variance climbs above 0. A quarter of the training prompts are multiplications,
  which the start never learned and which therefore always score 0: they give the critic
  something it can surely learn (which prompts pay). On addition alone it also climbed, to ~0.2
  by step 100 of the demo's PPO stage, as the policy's success became predictable per prompt.
- With a trained reward model as the reward (the echo-pair reward model, tests/conftest.py),
  that model's mean score of the policy's greedy held-out answers rises.

``POSTTRAIN_TEST_SEED`` picks the training seed (tests/README.md).
"""

from __future__ import annotations

import json

import pytest

from posttrain.algorithms.ppo import PPOConfig, PPOTrainer
from posttrain.demo import DEMO_EVAL_ROWS, demo_task, online_config
from posttrain.rollout import exact_answer, reward_model_function
from posttrain.tasks import ArithmeticTask, exact_match_accuracy
from posttrain.tasks.evaluate import generate_greedy


def _config(tmp_path, seed, **values) -> PPOConfig:
    """The PPO demo's recipe (posttrain.demo.online_config) with ``values`` on top."""
    return online_config("ppo", str(tmp_path), seed=seed, **{"progress_bar": False, "save_final_model": False, "logging_steps": 4, **values})


def test_exact_match_reward_raises_held_out_accuracy_and_the_critic_learns(noisy_start, tmp_path, learning_seed):
    path, start = noisy_start
    task = demo_task()
    products = ArithmeticTask(seed=learning_seed, min_operand=10, operators=("*",)).prompt_only("train", 1000)
    trainer = PPOTrainer(path, _config(tmp_path, learning_seed), train_dataset=task.prompt_only("train", 3000) + products, reward_funcs=[exact_answer()])
    trainer.train()
    after = exact_match_accuracy(task, trainer.model, trainer.tokenizer, task.prompt_only("test", 200))
    # measured 86-87.5% from 10.5-26.5% with the products mixed in (test seeds 0, 1, 2); the demo's
    # PPO stage (addition only) 76-97% (seeds 0-4 x 1, 2 threads)
    assert after.accuracy >= start.accuracy + 0.3 and after.eos_rate >= 0.95, (start.accuracy, after.accuracy)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    explained = [r["val/explained_variance"] for r in records]
    assert explained[0] == pytest.approx(0.0, abs=0.05)  # the new head starts at 0: it explains nothing
    late = explained[len(explained) // 2 :]
    print(f"ppo exact-answer: start {start.accuracy:.3f} after {after.accuracy:.3f} explained variance {explained}")
    assert sum(late) / len(late) > 0.1, explained  # measured: mean of the second half 0.40-0.55 (seeds 0, 1, 2)


def test_ppo_raises_a_trained_reward_models_score(noisy_start, echo_reward_model, tmp_path, learning_seed):
    path, _ = noisy_start
    reward = reward_model_function(*echo_reward_model)
    held_out = [row["prompt"] for row in demo_task().prompt_only("test", DEMO_EVAL_ROWS)]

    def mean_score(model, tokenizer) -> float:
        replies = [g.text for g in generate_greedy(model, tokenizer, held_out)]
        return sum(reward(held_out, replies)) / len(held_out)

    # The demo's PPO learning rate (5e-4): at 1e-3 one start of six (a run whose noisy start differed
    # only by float rounding) collapsed to empty replies and fell from 4.44 to 2.60.
    config = _config(tmp_path / "ppo", learning_seed, max_steps=80, logging_steps=0)
    trainer = PPOTrainer(path, config, train_dataset=demo_task().prompt_only("train", 4000), reward_funcs=[reward])
    before = mean_score(trainer.model, trainer.tokenizer)
    trainer.train()
    after = mean_score(trainer.model, trainer.tokenizer)
    print(f"ppo reward-model score: before {before:.3f} after {after:.3f}")
    # measured +0.33 to +0.86 (seeds 0, 1, 2 x two noisy starts that differ by float rounding, 1 thread)
    assert after - before >= 0.2, (before, after)
