"""PPO's low-level API (issue 8 must-shows 2 and 6): the issue's snippet runs verbatim, ``step``
returns its stats and shares the run's state, every reward form means the same thing, strings
from ``generate`` map back to the sampled tokens, and each bad input is refused by name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.ppo import PPOConfig, PPOTrainer
from posttrain.testing import assert_tensors_close_to_scale

QUERY = "Explain RLHF in simple terms."


@pytest.fixture(scope="module")
def brief_model(tmp_path_factory, model_path) -> str:
    """The tiny Llama fixture made to answer briefly: its EOS logit, untied from the embeddings,
    is scaled so EOS is sampled about every second token (responses of ~2 tokens keep these
    tests fast; the 256-token default limit is never reached)."""
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    tokenizer = AutoTokenizer.from_pretrained(model_path("llama"))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 100.0
    path = tmp_path_factory.mktemp("brief-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def reward_model(response: str) -> float:
    """Any Python reward in place of a reward model."""
    return len(response) / 10.0


def test_the_issue_snippet_runs_verbatim(brief_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output_dir, outputs/ppo-<time>, lands here
    model, tokenizer = brief_model, AutoTokenizer.from_pretrained(brief_model)
    torch.manual_seed(0)

    ppo_config = PPOConfig(batch_size=32)
    ppo_trainer = PPOTrainer(ppo_config, model, tokenizer)
    for _epoch in range(10):
        queries = ["Explain RLHF in simple terms."] * 32
        responses = ppo_trainer.generate(queries)
        rewards = [reward_model(response) for response in responses]
        ppo_trainer.step(queries, responses, rewards)

    # 32 completions in mini-batches of 8 (the default per_device_train_batch_size), 4 epochs each
    assert ppo_trainer.state.step == 10 * 4 * 4
    assert all(isinstance(r, str) for r in responses) and len(responses) == 32
    output_dir = tmp_path / ppo_trainer.config.output_dir
    assert output_dir.parent == tmp_path / "outputs" and output_dir.name.startswith("ppo-")
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 161, 10))  # logging_steps=10, shared with train()
    start = AutoModelForCausalLM.from_pretrained(model).state_dict()
    assert any(not torch.equal(p, start[n]) for n, p in ppo_trainer.model.state_dict().items())


def _config(tmp_path, name="run", **values) -> PPOConfig:
    base = dict(output_dir=str(tmp_path / name), batch_size=4, per_device_train_batch_size=2, ppo_epochs=2, learning_rate=1e-3,
                max_completion_length=8, logging_steps=1, progress_bar=False, seed=1)
    return PPOConfig(**{**base, **values})


def test_step_returns_the_stats_of_its_optimizer_steps(brief_model, tmp_path):
    trainer = PPOTrainer(_config(tmp_path), brief_model)
    queries = [QUERY, [{"role": "user", "content": "Hi"}], [3, 4, 5], torch.tensor([6, 7])]
    responses = trainer.generate(queries)
    stats = trainer.step(queries, responses, [1.0, 0.0, 0.5, -1.0])
    expected = {"loss", "loss/policy_avg", "loss/value_avg", "policy/approxkl_avg", "clip_ratio/region_mean", "entropy", "val/clipfrac_avg",
                "objective/kl", "objective/entropy", "objective/scores", "objective/non_score_reward", "objective/kl_coef",
                "returns/mean", "advantages/mean", "val/explained_variance", "time/generation", "time/experience",
                "time/training", "learning_rate", "step"}
    assert expected <= set(stats), expected - set(stats)
    assert stats["step"] == 4.0 and trainer.state.step == 4  # 2 mini-batches x 2 epochs
    assert stats["objective/scores"] == pytest.approx(0.125) and stats["time/generation"] > 0
    assert all(math.isfinite(v) for v in stats.values())
    assert isinstance(trainer.generate(QUERY), str) and isinstance(trainer.generate(QUERY, return_ids=True), list)


def _trained_weights(model, tmp_path, name, responses, rewards, **values):
    trainer = PPOTrainer(_config(tmp_path, name, **values), model)
    trainer.step([QUERY] * 4, responses, rewards)
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_every_reward_form_means_the_same(brief_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(brief_model)
    eos = tokenizer.eos_token_id
    responses = [[40, 41, eos], [42, eos], [43, 44, 45, eos], [46]]  # the last never stopped
    scores = [1.0, -0.5, 2.0, 0.25]
    floats = _trained_weights(brief_model, tmp_path, "floats", responses, scores)
    forms = {
        "tensors": [torch.tensor(s) for s in scores],
        "numpy": [np.float32(s) for s in scores],
        "per_token": [[0.0] * (len(r) - 1) + [s] for r, s in zip(responses, scores)],
        "one_element": [torch.tensor([s]) for s in scores],
    }
    for name, rewards in forms.items():
        weights = _trained_weights(brief_model, tmp_path, name, responses, rewards)
        assert_tensors_close_to_scale({key: weights[key] for key in floats}, floats)
    # per-token rewards spread over the tokens train differently from the same total at the end
    spread = [[s / len(r)] * len(r) for r, s in zip(responses, scores)]
    weights = _trained_weights(brief_model, tmp_path, "spread", responses, spread)
    assert any(not torch.allclose(weights[k], v) for k, v in floats.items())


def test_strings_from_generate_train_on_the_sampled_tokens(brief_model, tmp_path):
    queries = [QUERY] * 4
    torch.manual_seed(5)
    first = PPOTrainer(_config(tmp_path, "text"), brief_model)
    texts = first.generate(queries)
    first.step(queries, texts, [1.0, 2.0, 3.0, 4.0])
    torch.manual_seed(5)
    second = PPOTrainer(_config(tmp_path, "ids"), brief_model)
    ids = second.generate(queries, return_ids=True)
    assert [second.tokenizer.decode(i, skip_special_tokens=True) for i in ids] == texts
    assert all(i[-1] == second.tokenizer.eos_token_id for i in ids)  # EOS is kept, the text drops it
    second.step(queries, ids, [1.0, 2.0, 3.0, 4.0])
    assert_tensors_close_to_scale(dict(first.model.named_parameters()), dict(second.model.named_parameters()))


def test_positional_and_keyword_forms_agree(brief_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(brief_model)
    trl_form = PPOTrainer(_config(tmp_path, "a"), brief_model, tokenizer)
    keyword_form = PPOTrainer(model=brief_model, config=_config(tmp_path, "b"), tokenizer=tokenizer)
    ours = PPOTrainer(brief_model, _config(tmp_path, "c"))
    assert trl_form.tokenizer is tokenizer and keyword_form.tokenizer is tokenizer
    assert trl_form.config.output_dir.endswith("a") and ours.config.output_dir.endswith("c")
    with pytest.raises(TypeError, match="third argument is a model"):
        PPOTrainer(_config(tmp_path, "d"), brief_model, AutoModelForCausalLM.from_pretrained(brief_model))
    with pytest.raises(TypeError, match="config first"):
        PPOTrainer(brief_model, _config(tmp_path, "e"), tokenizer)


# ----------------------------------------------------------------------------- bad input (must-show 6)

GOOD = {"queries": [QUERY] * 4, "responses": [" a", " b", " c", " d"], "rewards": [1.0, 0.0, 0.5, 0.2]}


def _replace(field: str, index: int | None, value):
    inputs = {k: list(v) for k, v in GOOD.items()}
    if index is None:
        inputs[field] = value
    else:
        inputs[field][index] = value
    return inputs


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        (_replace("responses", None, [" a", " b", " c"]), ValueError, r"4 queries, 3 responses and 4 rewards"),
        (_replace("rewards", None, [1.0] * 5), ValueError, r"4 queries, 4 responses and 5 rewards"),
        ({k: v * 2 for k, v in GOOD.items()}, ValueError, r"8 samples but the config has batch_size=4"),
        (_replace("responses", 2, ""), ValueError, r"response 2 is empty"),
        (_replace("responses", 1, []), ValueError, r"response 1 is empty"),
        (_replace("rewards", 3, float("nan")), ValueError, r"reward 3 is not finite"),
        (_replace("rewards", 0, float("inf")), ValueError, r"reward 0 is not finite"),
        (_replace("rewards", 1, torch.tensor(float("nan"))), ValueError, r"reward 1 is not finite"),
        (_replace("rewards", 2, [0.0, float("-inf")] + [0.0] * 4), ValueError, r"reward 2 has 6 per-token values but response 2 has \d+ tokens"),
        (_replace("rewards", None, [[0.0, float("nan")]] * 4), ValueError, r"reward 0 is not finite|reward 0 has 2"),
        (_replace("rewards", 1, None), TypeError, r"reward 1: expected a number"),
        (_replace("rewards", 1, "high"), TypeError, r"reward 1: expected a number"),
        (_replace("rewards", 0, True), TypeError, r"reward 0: expected a number"),
        (_replace("rewards", 0, torch.ones(2, 2)), TypeError, r"reward 0: expected a number"),
        (_replace("responses", 3, 7), TypeError, r"response 3: expected a string or token ids"),
        (_replace("responses", 0, [3, -1]), ValueError, r"response 0: token ids must be integers in \[0, \d+\)"),
        (_replace("queries", 2, 12), TypeError, r"query 2: expected a string, a list of messages or token ids"),
        (_replace("queries", 0, ""), ValueError, r"query 0 is an empty string"),
        (_replace("queries", None, QUERY), TypeError, r"queries must be a list"),
        (_replace("rewards", None, torch.ones(4, 1)), TypeError, r"rewards must be a list"),
    ],
)
def test_step_rejects_bad_input_by_name(brief_model, tmp_path, inputs, error, message):
    trainer = PPOTrainer(_config(tmp_path), brief_model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(error, match=message):
        trainer.step(inputs["queries"], inputs["responses"], inputs["rewards"])
    assert trainer.state.step == 0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
