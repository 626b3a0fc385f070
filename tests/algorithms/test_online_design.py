"""The online half's design (issue 17): an injected engine that keeps its own copy of the weights
is given them whenever the policy moved (so it samples what the live policy would), the
experience a checkpoint holds carries no metrics, and losses and advantages are picked by name."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.grpo import GRPOConfig, GRPOTrainer
from posttrain.algorithms.ppo import PPOConfig, PPOTrainer
from posttrain.losses.advantages import group_advantages, group_relative_advantages, leave_one_out_advantages
from posttrain.losses.policy import clipped_policy_loss, policy_loss
from posttrain.rollout import HFGenerationEngine
from posttrain.tasks import ArithmeticTask

PROMPTS = ArithmeticTask(seed=5).prompt_only("train", 8)


def length_reward(completions):
    return [float(len(c)) for c in completions]


class OwnCopyEngine:
    """An engine with its own copy of the weights, as a vLLM engine has: it samples from that copy
    and learns of the policy's progress only through ``update_weights``."""

    holds_weights = True

    def __init__(self, model_dir: str):
        self.copy = AutoModelForCausalLM.from_pretrained(model_dir)
        self.inner = HFGenerationEngine(self.copy, AutoTokenizer.from_pretrained(model_dir))
        self.updates = []  # the weights given, one snapshot per call

    @property
    def last_stats(self):
        return self.inner.last_stats

    def update_weights(self, model) -> None:
        self.updates.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        self.copy.load_state_dict(model.state_dict())

    def generate(self, prompt_ids, options, num_generations=1):
        return self.inner.generate(prompt_ids, options, num_generations)


def _config(config_cls, tmp_path, name, **values):
    base = dict(output_dir=str(tmp_path / name), learning_rate=1e-2, lr_scheduler="constant", logging_steps=0, progress_bar=False,
                save_final_model=False, mixed_precision="no", seed=3, temperature=1.5, max_completion_length=6)
    return config_cls(**{**base, **values})


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_an_engine_with_its_own_weights_samples_what_the_live_policy_would(model_path, tmp_path, algorithm):
    # GRPO: 2 optimizer steps per generation batch; PPO: 2 mini-batches x 1 epoch; 3 generation batches each
    if algorithm == "grpo":
        trainer_cls, values = GRPOTrainer, dict(num_generations=4, per_device_train_batch_size=8, num_iterations=2, max_steps=6)
        config_cls = GRPOConfig
    else:
        trainer_cls, values = PPOTrainer, dict(batch_size=8, per_device_train_batch_size=4, ppo_epochs=1, max_steps=6, kl_coef=0.0)
        config_cls = PPOConfig
    snapshots = {}

    def remember(trainer, state):  # the policy's weights after each step
        snapshots[state.step] = {n: t.detach().clone() for n, t in trainer.unwrapped_model().state_dict().items()}

    live = trainer_cls(model_path("llama"), _config(config_cls, tmp_path, "live", **values), train_dataset=PROMPTS, reward_funcs=[length_reward])
    live.train()
    engine = OwnCopyEngine(model_path("llama"))
    copied = trainer_cls(model_path("llama"), _config(config_cls, tmp_path, "copy", **values), train_dataset=PROMPTS,
                         reward_funcs=[length_reward], rollout_engine=engine, callbacks=[remember])
    assert copied.engine is engine
    copied.train()
    # synced once per generation batch (before steps 0, 2 and 4), not after every step
    assert len(engine.updates) == 3
    for update, step in zip(engine.updates[1:], (2, 4)):
        assert all(torch.equal(update[n], snapshots[step][n]) for n in update)
    # the same samples as the live policy's, so the same training
    for name, weight in live.model.state_dict().items():
        assert torch.equal(copied.model.state_dict()[name], weight), name


def test_the_default_engine_generates_with_the_live_policy(model_path, tmp_path):
    trainer = GRPOTrainer(model_path("llama"), _config(GRPOConfig, tmp_path, "default", num_generations=4, per_device_train_batch_size=8),
                          train_dataset=PROMPTS, reward_funcs=[length_reward])
    assert isinstance(trainer.engine, HFGenerationEngine) and not trainer.engine.holds_weights
    assert trainer.engine.model is trainer.model


def test_checkpointed_experience_holds_no_metrics(model_path, tmp_path):
    config = _config(GRPOConfig, tmp_path, "buffer", num_generations=4, per_device_train_batch_size=8, num_iterations=2, max_steps=1)
    trainer = GRPOTrainer(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=[length_reward])
    trainer.train()
    state = trainer.buffer.state_dict()
    assert set(state) == {"experience", "steps", "layout"} and state["steps"] == [list(range(8))]  # the second pass is still to come
    assert state["layout"] is None  # only update_layout="measure" records one (chosen at the first step)
    experience = state["experience"]
    assert experience.old_logps is not None and experience.advantages.shape == experience.completion_mask.shape
    assert not any(isinstance(value, dict) for value in vars(experience).values())


def test_policy_losses_and_group_advantages_by_name():
    torch.manual_seed(0)
    logps = torch.randn(3, 4, requires_grad=True)
    old, advantages, mask = logps.detach() + 0.3 * torch.randn(3, 4), torch.randn(3), torch.ones(3, 4)
    named, _ = policy_loss("clipped", logps, old, advantages, mask, clip_low=0.1)
    direct, _ = clipped_policy_loss(logps, old, advantages, mask, clip_low=0.1)
    assert torch.equal(named, direct)
    with pytest.raises(ValueError, match="unknown policy loss 'ppo2'; valid: clipped"):
        policy_loss("ppo2", logps, old, advantages, mask)
    rewards = torch.tensor([1.0, 0.0, 3.0, 2.0, 2.0, 5.0])
    assert torch.equal(group_advantages("grpo", rewards, 3, scale="none"), group_relative_advantages(rewards, 3, scale="none"))
    # options another estimator takes are ignored: one config serves every estimator
    assert torch.equal(group_advantages("rloo", rewards, 3, scale="none"), leave_one_out_advantages(rewards, 3))
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'"):
        group_advantages("gae", rewards, 3)
