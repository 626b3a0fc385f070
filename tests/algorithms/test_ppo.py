"""PPOTrainer.train(): the experience (KL-penalised rewards, missing-EOS penalty, GAE, KL
controller) against hand-derived numbers on ragged completions, invariants of the update on
scripted experience, the rollout schedule (ppo_epochs x mini-batches, early stop), the critic
layouts, the completion log, exact resume and clear errors (issue 8 must-shows 1 and 4)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.experience import Experience, Samples, right_padded
from posttrain.algorithms.ppo import PPOConfig, PPOTrainer
from posttrain.losses.advantages import whiten_advantages
from posttrain.losses.kl import AdaptiveKLController
from posttrain.rollout import Completion
from posttrain.tasks import ArithmeticTask
from posttrain.testing import ScriptedEngine, assert_tensors_close_to_scale

TASK = ArithmeticTask(seed=5)
PROMPTS = TASK.prompt_only("train", 16)
TEXTS = [" 1", " 22", " 7 7 7", " 333", " 4"]


def length_reward(completions):
    """Deterministic and different across completions: the length in characters."""
    return [float(len(c)) for c in completions]


def _config(tmp_path, name="run", **values) -> PPOConfig:
    base = dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=8, batch_size=8, ppo_epochs=1, max_completion_length=8,
        learning_rate=1e-3, lr_scheduler="constant", max_steps=2, logging_steps=1, progress_bar=False,
        save_final_model=False, mixed_precision="no", seed=3,
    )
    return PPOConfig(**{**base, **values})


def _trainer(model_path, config, engine_texts=TEXTS, reward_funcs=(length_reward,), **kwargs) -> PPOTrainer:
    if engine_texts is not None:
        kwargs["rollout_engine"] = ScriptedEngine(AutoTokenizer.from_pretrained(model_path("llama")), engine_texts)
    return PPOTrainer(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=list(reward_funcs), **kwargs)


def _records(tmp_path, name="run") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- experience (must-show 1)


def test_experience_hand_values_on_ragged_completions(model_path, tmp_path):
    config = _config(tmp_path, kl_coef=0.1, gamma=0.9, lam=0.5, missing_eos_penalty=1.0, whiten_advantages=False,
                     adap_kl_ctrl=True, kl_target=6.0, kl_horizon=10.0)
    trainer = _trainer(model_path, config)

    # completion 0: 3 tokens, ended with EOS, score 1; completion 1: 2 tokens, cut at the length limit, score 0.5
    completions = [Completion([7, 8, 9], "a", "eos"), Completion([7, 8], "b", "length")]
    samples = Samples([{"prompt_ids": [5, 6]}, {"prompt_ids": [5]}], completions, [[0.0, 0.0, 1.0], [0.0, 0.5]])
    experience = Experience.from_samples(samples)
    logps, values = right_padded([[-1.0, -2.0, -0.5], [-1.5, -0.2]], 3), right_padded([[0.5, 0.4, 0.6], [0.2, -0.3]], 3)
    reference = right_padded([[-1.2, -2.0, -0.1], [-1.0, -0.2]], 3)
    out = trainer.ppo_targets(experience, logps, values, reference)
    # k1 = logp - ref: (0.2, 0, -0.4) and (-0.5, 0); the truncated score 0.5 - penalty 1 = -0.5
    # rewards = token rewards - 0.1 * k1: (-0.02, 0, 1 + 0.04) and (0.05, -0.5)
    torch.testing.assert_close(out.kl, torch.tensor([[0.2, 0.0, -0.4], [-0.5, 0.0, 0.0]]))
    torch.testing.assert_close(out.rewards, torch.tensor([[-0.02, 0.0, 1.04], [0.05, -0.5, 0.0]]))
    torch.testing.assert_close(out.scores, torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(out.sequence_kl, torch.tensor([-0.2, -0.5]))
    # GAE, gamma * lam = 0.45. Row 0: t2 delta = 1.04 - 0.6 = 0.44; t1 delta = 0.9 * 0.6 - 0.4 = 0.14,
    # A1 = 0.14 + 0.45 * 0.44 = 0.338; t0 delta = -0.02 + 0.9 * 0.4 - 0.5 = -0.16, A0 = -0.16 + 0.45 * 0.338 = -0.0079.
    # Row 1: t1 delta = -0.5 + 0.3 = -0.2; t0 delta = 0.05 - 0.27 - 0.2 = -0.42, A0 = -0.42 - 0.09 = -0.51.
    expected = torch.tensor([[-0.0079, 0.338, 0.44], [-0.51, -0.2, 0.0]])
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, torch.tensor([[0.4921, 0.738, 1.04], [-0.31, -0.5, 0.0]]))
    # whitening on: the same advantages normalised over the 5 real tokens
    trainer.config.whiten_advantages = True
    whitened = trainer.ppo_targets(experience, logps, values, reference).advantages
    torch.testing.assert_close(whitened, whiten_advantages(expected, experience.completion_mask))
    # the adaptive controller sees the mean per-sequence KL (-0.35) over 2 completions:
    # error = clip(-0.35 / 6 - 1, -0.2, 0.2) = -0.2, coefficient 0.1 * (1 - 0.2 * 2 / 10) = 0.096
    trainer.update_kl_controller(out)
    assert trainer.kl_controller.value == pytest.approx(0.096)


# ----------------------------------------------------------------------------- the update on scripted experience


@pytest.mark.parametrize(
    "variant", [{"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}, {"packing": False}], ids=["accumulation", "padded"]
)
def test_micro_batching_and_packing_leave_the_gradients_unchanged(model_path, tmp_path, first_step_gradients, variant):
    """8 completions in one packed micro-batch, in 4 micro-batches of 2, or one per padded row:
    the first step's gradients (policy and critic) are the same."""
    expected = first_step_gradients(_trainer(model_path, _config(tmp_path, "whole")).train)
    actual = first_step_gradients(_trainer(model_path, _config(tmp_path, "variant", **variant)).train)
    assert any(name.startswith("critic.") and g.abs().sum() > 0 for name, g in expected.items())  # the critic trains too
    assert any(name.startswith("model.") and g.abs().sum() > 0 for name, g in expected.items())
    assert_tensors_close_to_scale(actual, expected)


def test_rollout_batch_serves_epochs_times_mini_batches(model_path, tmp_path):
    # 16 completions, mini-batches of 2 x 4 = 8: 2 mini-batches x 3 epochs = 6 steps per rollout batch
    config = _config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=4, batch_size=16, ppo_epochs=3, max_steps=12)
    trainer = _trainer(model_path, config)
    trainer.train()
    assert trainer.engine.calls == 2
    records = _records(tmp_path)
    assert [("objective/scores" in r) for r in records] == [True] + [False] * 5 + [True] + [False] * 5
    # the first mini-batch is trained by the policy that sampled it: ratio 1, nothing clipped
    assert records[0]["val/ratio"] == pytest.approx(1.0, abs=1e-6) and records[0]["policy/approxkl_avg"] == pytest.approx(0.0, abs=1e-10)
    assert records[0]["clip_ratio/region_mean"] == 0.0
    assert records[5]["policy/approxkl_avg"] > 1e-6  # later steps train a policy that has moved
    assert trainer.state.step == 12


def test_mini_batch_order_is_a_fresh_permutation_per_epoch_and_reproducible(model_path, tmp_path):
    from posttrain.train.state import TrainState

    trainer = _trainer(model_path, _config(tmp_path, per_device_train_batch_size=4, batch_size=8, ppo_epochs=3))

    def order(step):  # the experience rows of each optimizer step of a rollout batch of 8
        return trainer.mini_batch_schedule(8, TrainState(step=step))

    first = order(4)
    assert len(first) == 6 and all(sorted(a + b) == list(range(8)) for a, b in zip(first[::2], first[1::2]))
    epochs = [first[0] + first[1], first[2] + first[3], first[4] + first[5]]
    assert len({tuple(e) for e in epochs}) == 3  # each epoch its own order
    assert order(4) == first and order(5) != first  # seeded by (seed, step, epoch), not the global RNG


def test_early_stop_on_approximate_kl_skips_the_rest_of_the_rollout_batch(model_path, tmp_path):
    # 2 mini-batches x 2 epochs = 4 steps per rollout batch; step 1 measures KL 0 (ratio 1), step 2
    # measures a moved policy above the tiny target: steps 3-4 are skipped, step 3 starts a new batch
    config = _config(tmp_path, per_device_train_batch_size=4, batch_size=8, ppo_epochs=2, max_steps=3, target_kl=1e-9, learning_rate=1e-2)
    trainer = _trainer(model_path, config)
    trainer.train()
    assert trainer.engine.calls == 2
    records = _records(tmp_path)
    assert [r["policy/early_stop"] for r in records] == [0.0, 1.0, 0.0]
    assert records[1]["policy/skipped_steps"] == 2.0
    assert "objective/scores" in records[2]


def test_adaptive_kl_coefficient_follows_the_measured_kl(model_path, tmp_path):
    config = _config(tmp_path, max_steps=3, kl_coef=0.2, adap_kl_ctrl=True, kl_target=0.01, kl_horizon=16.0, learning_rate=1e-2)
    trainer = _trainer(model_path, config)
    trainer.train()
    records = _records(tmp_path)
    controller = AdaptiveKLController(0.2, target=0.01, horizon=16.0)
    for record in records:
        assert record["objective/kl_coef"] == pytest.approx(controller.value, rel=1e-6)
        controller.update(record["objective/kl"], 8)
    assert records[1]["objective/kl"] > 0 and records[2]["objective/kl_coef"] != pytest.approx(0.2)
    assert trainer.kl_controller.value == pytest.approx(controller.value, rel=1e-6)


@pytest.mark.parametrize("layout", ["copy", "shared", "adapter"])
def test_each_critic_layout_learns_the_scripted_returns(model_path, tmp_path, layout):
    lora = {"use_lora": True, "lora_r": 4, "lora_alpha": 8} if layout == "adapter" else {}
    # the value loss dominates (vf_coef 1, no gradient clipping); the critic starts at 0 and the
    # returns are ~4 (measured: 7.8 -> 1.3 in 12 steps for every layout)
    config = _config(tmp_path, critic=layout, max_steps=12, learning_rate=1e-2, vf_coef=1.0, kl_coef=0.0, max_grad_norm=0.0, **lora)
    trainer = _trainer(model_path, config)
    trainer.train()
    assert trainer.critic_layout == layout
    losses = [r["loss/value_avg"] for r in _records(tmp_path)]
    assert losses[-1] < 0.3 * losses[0], losses
    if layout == "adapter":
        assert trainer.model.active_adapter == "default"


def test_no_reference_model_without_kl(model_path, tmp_path):
    trainer = _trainer(model_path, _config(tmp_path, kl_coef=0.0))
    assert trainer.reference is None
    trainer.train()
    assert "objective/kl" in _records(tmp_path)[0] and _records(tmp_path)[0]["objective/kl"] == 0.0


def test_completion_log_rows(model_path, tmp_path):
    trainer = _trainer(model_path, _config(tmp_path, max_steps=2, log_completions_steps=2))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["step"] for r in rows} == {2}
    assert {"prompt", "completion", "reward", "length_reward", "kl", "value", "return"} <= set(rows[0])
    assert all(r["reward"] == pytest.approx(r["length_reward"]) for r in rows)


# ----------------------------------------------------------------------------- resume (must-show 4)


def test_resume_after_kill_matches_uninterrupted_run(model_path, tmp_path, kill_at):
    """Sampling from the model (the RNG is restored), an adaptive KL coefficient (its state is in
    the checkpoint), 2 epochs x 2 mini-batches per rollout batch and a checkpoint in the middle of
    one (the remaining mini-batches, in their shuffled order, are in the checkpoint)."""

    def run(name, **extra):
        callbacks = extra.pop("callbacks", [])
        config = _config(tmp_path, name, per_device_train_batch_size=4, batch_size=8, ppo_epochs=2, max_steps=8, save_steps=3,
                         temperature=1.5, max_completion_length=6, adap_kl_ctrl=True, kl_target=0.5, kl_horizon=50.0, **extra)
        return _trainer(model_path, config, engine_texts=None, callbacks=callbacks)

    full = run("full", save_final_model=True)
    full.train()
    with pytest.raises(RuntimeError, match="killed at step 5"):
        run("cut", callbacks=[kill_at(5)]).train()
    resumed = run("cut", resume_from_checkpoint="latest", save_final_model=True)
    resumed.train()
    assert resumed.kl_controller.value == full.kl_controller.value != 0.05
    expected = full.model.state_dict()
    actual = AutoModelForCausalLM.from_pretrained(tmp_path / "cut" / "final").state_dict()
    start = AutoModelForCausalLM.from_pretrained(model_path("llama")).state_dict()
    assert any(not torch.equal(expected[n], start[n]) for n in expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    critic = {n: p for n, p in full.critic.state_dict().items()}
    for name, tensor in resumed.critic.state_dict().items():
        assert torch.equal(tensor, critic[name]), name


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 12}, "multiple of the mini-batch"),
        ({"num_iterations": 2}, "ppo_epochs"),
        ({"critic": "twin"}, "critic must be one of"),
        ({"kl_estimator": "k9"}, "kl_estimator"),
        ({"target_kl": 0.0}, "target_kl"),
    ],
)
def test_config_errors(tmp_path, values, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"critic": "adapter"}, "needs use_lora"),
        ({"critic": "adapter", "use_lora": True, "gradient_checkpointing": True}, "gradient_checkpointing"),
        ({"critic": "shared", "value_model": "VALUE"}, "own backbone"),
    ],
)
def test_critic_option_errors(model_path, tmp_path, values, message):
    if values.get("value_model") == "VALUE":
        values["value_model"] = model_path("classifier-llama")
    with pytest.raises(ValueError, match=message):
        _trainer(model_path, _config(tmp_path, **values))


def test_train_without_prompt_data_says_what_to_pass(model_path, tmp_path):
    trainer = PPOTrainer(model_path("llama"), _config(tmp_path), reward_funcs=[length_reward])
    with pytest.raises(ValueError, match="train_dataset"):
        trainer.train()
