"""Multi-turn episodes with tools in the online trainers (issue 18): tokens inserted between the
model's turns get no gradient and no advantage (GRPO and PPO), the score sits on the model's last
token, reward functions see the episode's messages and environment, the metrics and the
completion log show the episodes, and a resumed run replays them exactly.

The episodes are scripted (``posttrain.testing.ScriptedTurnsEngine``): each turn is chosen from
a few variants by the question, so every group holds episodes that call the tool, answer
directly, or call it wrongly, and their rewards differ."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.grpo import GRPOConfig, GRPOTrainer
from posttrain.algorithms.ppo import PPOConfig, PPOTrainer
from posttrain.errors import ConfigError
from posttrain.rollout import exact_answer
from posttrain.rollout.agents import ToolError
from posttrain.tasks.tool_use import multiply, tool_prompts, tool_task
from posttrain.testing import TOOLS_TEMPLATE, ScriptedTurnsEngine

PROMPTS = tool_prompts(tool_task(seed=3), "train", 8)


def call_text(a, b) -> str:
    return f'<tool_call>{{"name": "multiply", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call><|im_end|>'


def scripted_turn(context: str, variant: int) -> str:
    """Variant 0 calls multiply and copies its result, 1 answers directly (wrongly), 2 writes a
    malformed call and then gives up, 3 calls with swapped numbers and answers one too high."""
    a, b = (int(x) for x in re.findall(r"What is (\d+)\*(\d+)\?", context)[0])
    turn = context.count("<|im_start|>assistant\n") - 1
    results = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", context)
    if variant == 0:
        return call_text(a, b) if turn == 0 else f"{results[-1]}<|im_end|>"
    if variant == 1:
        return f"{a * b + 1}<|im_end|>"
    if variant == 2:
        return '<tool_call>{"name": "multiply"</tool_call><|im_end|>' if turn == 0 else "no idea<|im_end|>"
    return call_text(b, a) if turn == 0 else f"{int(results[-1]) + 1}<|im_end|>"


class VariantByPosition:
    """The k-th episode of each generate call of the first round takes variant ``k % 4``, and keeps
    it in later rounds (found again from its first turn)."""

    def __call__(self, context: str) -> str:
        return scripted_turn(context, self.variant_of(context))

    def start(self, contexts: int) -> None:
        self.next_variant = 0

    def variant_of(self, context: str) -> int:
        first = re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", context)
        if not first:
            variant, self.next_variant = self.next_variant % 4, self.next_variant + 1
            return variant
        if first[0].startswith('<tool_call>{"name": "multiply"</tool_call>'):
            return 2
        a, b = (int(x) for x in re.findall(r"What is (\d+)\*(\d+)\?", context)[0])
        return 0 if first[0] == call_text(a, b).removesuffix("<|im_end|>") else 3


class Engine(ScriptedTurnsEngine):
    def __init__(self, tokenizer):
        self.script = VariantByPosition()
        super().__init__(tokenizer, self.script)

    def generate(self, prompt_ids, options, num_generations=1):
        self.script.start(len(prompt_ids))
        return super().generate(prompt_ids, options, num_generations)


def _values(tmp_path, name, **values) -> dict:
    base = dict(
        output_dir=str(tmp_path / name), max_completion_length=160, learning_rate=1e-3, lr_scheduler="constant", max_steps=1,
        logging_steps=1, progress_bar=False, save_final_model=False, mixed_precision="no", seed=3, chat_template=TOOLS_TEMPLATE,
        max_tool_calling_iterations=2,
    )
    return {**base, **values}


def grpo(model_path, tmp_path, name="grpo", reward_funcs=None, **values):
    config = GRPOConfig(**_values(tmp_path, name, num_generations=4, per_device_train_batch_size=8, **values))
    engine = Engine(AutoTokenizer.from_pretrained(model_path("llama")))
    rewards = reward_funcs or [exact_answer()]
    return GRPOTrainer(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=rewards, rollout_engine=engine, tools=[multiply])


def ppo(model_path, tmp_path, name="ppo", **values):
    config = PPOConfig(**_values(tmp_path, name, batch_size=8, per_device_train_batch_size=8, ppo_epochs=1, kl_coef=0.05, **values))
    engine = Engine(AutoTokenizer.from_pretrained(model_path("llama")))
    return PPOTrainer(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=[exact_answer()], rollout_engine=engine, tools=[multiply])


def record_update(trainer, monkeypatch) -> dict:
    """Run one step; return the experience and, per micro-batch, the completion-view log-probs
    (and values) with their gradients."""
    seen = {"forward": []}
    prepare, forward = trainer.prepare_experience, trainer.policy_forward

    def recording_prepare(samples, state):
        prepare(samples, state)
        seen["experience"] = trainer.buffer.experience

    def recording_forward(module, batch, with_values=False):
        logps, entropy, values = forward(module, batch, with_values)
        for tensor in (logps, values):
            if tensor is not None:
                tensor.retain_grad()
        seen["forward"].append((batch, logps, values))
        return logps, entropy, values

    monkeypatch.setattr(trainer, "prepare_experience", recording_prepare)
    monkeypatch.setattr(trainer, "policy_forward", recording_forward)
    trainer.train()
    return seen


def inserted_and_sampled(experience, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, L)`` bool masks of the rows' inserted and sampled completion tokens."""
    width = experience.completion_mask.shape[1]
    inserted, sampled = torch.zeros(len(rows), width, dtype=torch.bool), torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows.tolist()):
        generated = torch.tensor(experience.samples.completions[row].generated)
        inserted[i, : len(generated)], sampled[i, : len(generated)] = ~generated, generated
    return inserted, sampled


@pytest.mark.parametrize("make", [grpo, ppo], ids=["grpo", "ppo"])
def test_inserted_tokens_get_exactly_zero_gradient_and_zero_advantage(model_path, tmp_path, monkeypatch, make):
    trainer = make(model_path, tmp_path)
    seen = record_update(trainer, monkeypatch)
    experience = seen["experience"]
    every_row = torch.arange(len(experience))
    inserted, sampled = inserted_and_sampled(experience, every_row)
    assert inserted.sum() > 0 and sampled.sum() > 0  # the episodes did call tools
    assert torch.equal(experience.completion_mask.bool(), sampled)
    assert torch.all(experience.advantages[inserted] == 0)
    assert experience.advantages[sampled].abs().sum() > 0
    for batch, logps, values in seen["forward"]:
        inserted, sampled = inserted_and_sampled(experience, batch.rows)
        width = logps.shape[1]
        assert torch.all(logps.grad[inserted[:, :width]] == 0)
        assert logps.grad[sampled[:, :width]].abs().sum() > 0
        if values is not None:  # PPO's critic learns only where the policy acted
            assert torch.all(values.grad[inserted[:, :width]] == 0)
            assert values.grad[sampled[:, :width]].abs().sum() > 0


def test_the_score_is_on_the_models_last_token_and_rewards_read_the_episode(model_path, tmp_path, monkeypatch):
    seen_by_reward = {}

    def reads_everything(prompts, completions, answer, **kwargs):
        seen_by_reward.update(completions=completions, answer=answer)
        return [0.0] * len(completions)

    trainer = grpo(model_path, tmp_path, reward_funcs=[exact_answer(), reads_everything])
    seen = record_update(trainer, monkeypatch)
    experience = seen["experience"]
    # variant 0: call, tool result, the copied answer; scored 1 on its last sampled token
    episode = seen_by_reward["completions"][0]
    assert [m["role"] for m in episode] == ["assistant", "tool", "assistant"]
    arguments = episode[0]["tool_calls"][0]["function"]["arguments"]
    answer = seen_by_reward["answer"][0]
    assert str(arguments["a"] * arguments["b"]) == answer == episode[1]["content"] == episode[2]["content"]
    completion = experience.samples.completions[0]
    last = max(i for i, g in enumerate(completion.generated) if g)
    assert experience.rewards[0, last] == 1.0 and experience.rewards[0].sum() == 1.0
    scores = experience.samples.scores().tolist()
    assert scores[:4] == [1.0, 0.0, 0.0, 0.0]  # right, direct guess, malformed, off by one


def test_metrics_and_completion_log_show_the_episodes(model_path, tmp_path):
    trainer = grpo(model_path, tmp_path, log_completions_steps=1)
    trainer.train()
    [record] = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    # per group of 4: variant 0 calls once (2 turns), 1 answers (1 turn), 2 one malformed call (2 turns), 3 calls once (2 turns)
    assert record["tools/call_frequency"] == pytest.approx(3 / 4)
    assert record["tools/turns"] == pytest.approx(7 / 4)
    assert record["tools/failure_frequency"] == pytest.approx(1 / 3)
    assert record["tools/errors/malformed"] == pytest.approx(2.0)  # two groups, one each
    assert record["tools/hit_limit_ratio"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "completions.jsonl").read_text().splitlines()]
    a, b = rows[0]["prompt"].split("What is ")[1].split("?")[0].split("*")
    answer = str(int(a) * int(b))
    assert rows[0]["completion"] == f'<tool_call>{{"name": "multiply", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call>\n[tool multiply: {answer}]\n{answer}'


class Ledger:
    """An environment: its one tool records what the model asked, reset reads the answer column."""

    def __init__(self):
        self.asked, self.answer = [], None

    def reset(self, answer: str) -> None:
        self.answer = answer

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: a number
            b: a number
        """
        self.asked.append((a, b))
        return a * b


def test_environments_are_built_per_episode_and_reach_the_reward_functions(model_path, tmp_path):
    seen = []

    def asked_once(completions, environments):
        seen.extend(environments)
        return [float(len(e.asked) == 1) for e in environments]

    config = GRPOConfig(**_values(tmp_path, "env", num_generations=4, per_device_train_batch_size=8))
    engine = Engine(AutoTokenizer.from_pretrained(model_path("llama")))
    trainer = GRPOTrainer(
        model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=[asked_once], rollout_engine=engine, environment_factory=Ledger
    )
    trainer.train()
    assert len(seen) == 8 and len({id(e) for e in seen}) == 8
    assert [len(e.asked) for e in seen[:4]] == [1, 0, 0, 1]  # the malformed call never reached the environment
    # reset got each episode's own answer column: the product of the numbers it was asked about
    assert all(int(e.answer) == a * b for e in seen for a, b in e.asked) and all(e.answer is not None for e in seen)
    assert seen[0].answer == seen[3].answer != seen[4].answer


def test_resumed_run_replays_the_episodes_exactly(model_path, tmp_path, kill_at):
    class Sampled(Engine):
        """Each first turn's variant drawn from torch's RNG: a resume must restore it."""

        def generate(self, prompt_ids, options, num_generations=1):
            self.script.next_variant = int(torch.randint(0, 4, ()))
            return ScriptedTurnsEngine.generate(self, prompt_ids, options, num_generations)

    def run(name, callbacks=(), **extra):
        # two steps per generation batch and a checkpoint every 2 steps: the kill at step 3 falls
        # between the two steps of a batch, so the resumed run trains on the saved episodes
        config = GRPOConfig(**_values(tmp_path, name, num_generations=4, per_device_train_batch_size=8, max_steps=6, save_steps=3, num_iterations=2, **extra))
        engine = Sampled(AutoTokenizer.from_pretrained(model_path("llama")))
        return GRPOTrainer(
            model_path("llama"), config, train_dataset=PROMPTS * 2, reward_funcs=[exact_answer()], rollout_engine=engine, tools=[multiply], callbacks=callbacks
        )

    full = run("full", save_final_model=True)
    full.train()
    with pytest.raises(RuntimeError, match="killed at step 4"):
        run("cut", callbacks=[kill_at(4)]).train()
    run("cut", resume_from_checkpoint="latest", save_final_model=True).train()
    expected = full.model.state_dict()
    actual = AutoModelForCausalLM.from_pretrained(tmp_path / "cut" / "final").state_dict()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0, msg=name)


def test_a_template_without_tool_support_is_refused_at_construction(model_path, tmp_path):
    with pytest.raises(ToolError, match="no tool support"):
        grpo(model_path, tmp_path, chat_template=None)


def test_a_reward_reading_environments_needs_an_environment_factory(model_path, tmp_path):
    def needs_environments(completions, environments):
        return [0.0] * len(completions)

    config = GRPOConfig(**_values(tmp_path, "noenv", num_generations=4, per_device_train_batch_size=8))
    with pytest.raises(ConfigError, match="reads the episodes' environments"):
        GRPOTrainer(model_path("llama"), config, train_dataset=PROMPTS, reward_funcs=[needs_environments], tools=[multiply])


def test_dynamic_sampling_keeps_the_episode_metrics(model_path, tmp_path):
    trainer = grpo(model_path, tmp_path, name="dynamic", dynamic_sampling=True)
    trainer.train()
    [record] = [json.loads(line) for line in (tmp_path / "dynamic" / "metrics.jsonl").read_text().splitlines()]
    assert record["dynamic_sampling/rounds"] == 1  # every scripted group has reward variance
    assert record["tools/call_frequency"] == pytest.approx(3 / 4) and record["tools/errors/malformed"] == pytest.approx(2.0)
