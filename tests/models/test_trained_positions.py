"""The LM head on the trained tokens only (issue 9, must-show 1): with ``positions`` the head
skips prompts and pads, and every log-prob, statistic, loss and gradient is the one the full
head gave (float32: to rounding), for chunked and unchunked heads, padded and packed rows."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import DPOConfig, DPOTrainer
from posttrain.data import collate
from posttrain.data.collate import Collator, trained_positions
from posttrain.data.packing import pack_examples
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_close_to_scale, assert_tensors_close_to_scale


def _batch(tokenizer, layout: str, loss_mode: str = "assistant"):
    rows = ArithmeticTask(seed=5).conversations("train", 6, turns=2)
    examples = list(prepare_lm_data(rows, tokenizer, LMDataOptions(loss_mode=loss_mode, max_length=None)).examples)
    if layout == "packed":
        capacity = 2 * max(len(e["input_ids"]) for e in examples)
        examples = pack_examples(examples, capacity)
    return Collator(layout, pad_token_id=tokenizer.pad_token_id)(examples)


def _gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("chunk_size", [0, 5])
def test_head_on_trained_tokens_equals_full_head(model_path, chatml, arch, layout, chunk_size):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    module = TokenLogProbs(model, chunk_size=chunk_size)
    batch = _batch(chatml, layout)
    weights = batch["loss_weights"]
    positions = batch["trained_positions"]
    assert 0 < positions.numel() < weights.numel() // 2  # prompts and pads really are skipped

    full = module(batch["input_ids"], batch["position_ids"], with_stats=True)
    (-(full.logps * weights).sum()).backward()
    full_grads = _gradients(model)
    subset = module(batch["input_ids"], batch["position_ids"], with_stats=True, positions=positions)
    (-(subset.logps * weights).sum()).backward()
    subset_grads = _gradients(model)

    trained = weights > 0
    assert_close_to_scale(subset.logps[trained], full.logps[trained])
    assert_close_to_scale(subset.entropy[trained], full.entropy[trained])
    assert torch.equal(subset.argmax_correct[trained], full.argmax_correct[trained])
    # untrained tokens are not scored at all
    assert not subset.logps[~trained].any() and not subset.entropy[~trained].any() and not subset.argmax_correct[~trained].any()
    # float32 summation order differs (issue 22: 1.3e-7..2.8e-7 of the largest entry on AVX2)
    assert_tensors_close_to_scale(subset_grads, full_grads)


def test_positions_are_the_nonzero_weights_and_never_a_row_start(chatml):
    for loss_mode in ("all", "assistant", "last_assistant"):
        batch = _batch(chatml, "padded", loss_mode)
        flat = batch["loss_weights"].reshape(-1)
        assert torch.equal(batch["trained_positions"], torch.nonzero(flat).reshape(-1))
        assert batch["loss_weight_sum"] == pytest.approx(float(flat.sum()))
    with pytest.raises(ValueError, match="first token"):
        trained_positions(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))


def _without_positions(monkeypatch):
    """Collated batches without ``trained_positions``: the trainers then run the full head (the
    path before the head learned to skip tokens)."""
    monkeypatch.setattr(collate, "trained_positions", lambda weights: None)


@pytest.mark.parametrize("packing", [False, True])
def test_sft_first_step_gradients_unchanged(sft_first_step, tmp_path, monkeypatch, packing):
    rows = ArithmeticTask(seed=2).conversations("train", 6, turns=2)
    extra = {"packing": True, "max_length": 128} if packing else {}
    subset = sft_first_step(tmp_path / "subset", rows, logits_chunk_size=7, **extra)
    _without_positions(monkeypatch)
    full = sft_first_step(tmp_path / "full", rows, logits_chunk_size=7, **extra)
    assert_tensors_close_to_scale(subset, full)


@pytest.mark.parametrize("padding_free", [False, True])
def test_dpo_first_step_gradients_unchanged(first_step_gradients, model_path, tmp_path, monkeypatch, padding_free):
    pairs = ArithmeticTask(seed=4).preference_pairs("train", 6)

    def run(path):
        config = DPOConfig(
            output_dir=str(path), learning_rate=1e-3, progress_bar=False, logging_steps=0, save_final_model=False,
            max_steps=1, max_grad_norm=0.0, per_device_train_batch_size=3, padding_free=padding_free,
        )
        return first_step_gradients(DPOTrainer(model_path("llama"), config, train_dataset=pairs).train)

    subset = run(tmp_path / "subset")
    _without_positions(monkeypatch)
    full = run(tmp_path / "full")
    assert_tensors_close_to_scale(subset, full)


def _length_reward(completions):
    """Varies within every group, so the first step has a gradient (an untrained model never
    answers right)."""
    return [float(len(c)) for c in completions]


def _rollouts_without_positions(monkeypatch) -> list:
    """Rollout batches without ``completion_positions``: the full head, prompts included.
    Returns the list the patched collator appends to (one entry per batch)."""
    from posttrain.algorithms import online

    original, calls = online.micro_batch, []

    def full_head(*args, **kwargs):
        batch = original(*args, **kwargs)
        calls.append(batch.completion_positions)
        return dataclasses.replace(batch, completion_positions=None)

    monkeypatch.setattr(online, "micro_batch", full_head)
    return calls


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_online_first_step_gradients_unchanged(first_step_gradients, model_path, tmp_path, monkeypatch, algorithm):
    """GRPO (with a KL term and a second iteration, so the reference and old-log-prob passes
    skip the prompts too) and PPO (policy and value in one forward)."""
    from posttrain import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer

    prompts = ArithmeticTask(seed=1).prompt_only("train", 4)
    common = dict(
        learning_rate=1e-3, max_steps=1, progress_bar=False, logging_steps=0, save_final_model=False, seed=5,
        max_completion_length=6, max_grad_norm=0.0,
    )

    def run(path):
        if algorithm == "grpo":
            config = GRPOConfig(output_dir=str(path), num_generations=4, per_device_train_batch_size=8, beta=0.1, num_iterations=2, **common)
            trainer = GRPOTrainer(model_path("llama"), config, train_dataset=prompts, reward_funcs=[_length_reward])
        else:
            config = PPOConfig(output_dir=str(path), per_device_train_batch_size=4, **common)
            trainer = PPOTrainer(model_path("llama"), config, train_dataset=prompts, reward_funcs=[_length_reward])
        return first_step_gradients(trainer.train)

    subset = run(tmp_path / "subset")
    unscored = _rollouts_without_positions(monkeypatch)
    full = run(tmp_path / "full")
    assert unscored  # the second run really went through the full head
    assert_tensors_close_to_scale(subset, full)
