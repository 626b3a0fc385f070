"""Issue 18 must-show 1: online RL with a tool the model needs. From the tool-use start (SFT on
demonstrations that call ``multiply`` or answer directly; tests/conftest.py ``tool_start``), GRPO
with ``tools=[multiply]`` raises held-out accuracy by at least 30 points and the share of episodes
that call the tool; PPO with the tool runs and learns too.

Accuracy is that of sampled episodes (``posttrain.demo_tools.evaluate_tool_use``). Thresholds
follow tests/README.md (seeds via ``POSTTRAIN_TEST_SEED``, measured ranges beside them).
"""

from __future__ import annotations

import json

from posttrain.demo_tools import TOOLS_PROMISE_GAIN, tool_stage

QUIET = dict(progress_bar=False, save_final_model=False, logging_steps=5)


def test_grpo_learns_to_call_the_tool(tool_start, tmp_path, learning_seed):
    path, start = tool_start
    _, after = tool_stage("grpo", path, str(tmp_path), seed=learning_seed, **QUIET)
    print(f"grpo with tools: accuracy {start.accuracy:.3f} -> {after.accuracy:.3f}, tool use {start.tool_use:.3f} -> {after.tool_use:.3f}")
    assert after.accuracy >= start.accuracy + TOOLS_PROMISE_GAIN, (start.accuracy, after.accuracy)  # measured: TBD
    assert after.tool_use >= start.tool_use + 0.2, (start.tool_use, after.tool_use)  # measured: TBD
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    calls = [r["tools/call_frequency"] for r in records if "tools/call_frequency" in r]
    assert calls[-1] > calls[0], calls


def test_ppo_with_a_tool_runs_and_learns(tool_start, tmp_path, learning_seed):
    path, start = tool_start
    _, after = tool_stage("ppo", path, str(tmp_path), seed=learning_seed, **QUIET)
    print(f"ppo with tools: accuracy {start.accuracy:.3f} -> {after.accuracy:.3f}, tool use {start.tool_use:.3f} -> {after.tool_use:.3f}")
    assert after.accuracy >= start.accuracy + 0.1, (start.accuracy, after.accuracy)  # measured: TBD
