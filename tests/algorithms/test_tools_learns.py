"""Issue 18 must-show 1: online RL with a tool the model needs. From the tool-use start (the
copying base, then SFT on demonstrations that call ``multiply`` or answer directly, continued
until greedy episodes copy the tool's results; tests/conftest.py ``tool_start``), GRPO and PPO
with ``tools=[multiply]`` raise held-out accuracy and the share of episodes that call the tool.
The recipe is the demo's (``posttrain demo --algorithm tools``: :mod:`posttrain.demo_tools`).

Accuracy is that of sampled episodes (``posttrain.demo_tools.evaluate_tool_use``: 100 held-out
problems x 4 episodes at temperature 1). Thresholds follow tests/README.md (seed via
``POSTTRAIN_TEST_SEED``); the measurements beside them are whole-recipe runs over training seeds
0-4 at 1 and 2 threads (README, "Measured results"; the command is there).
"""

from __future__ import annotations

import pytest

from posttrain.demo_tools import tool_stage

QUIET = dict(progress_bar=False, save_final_model=False, logging_steps=0)


def _learns(algorithm, tool_start, tmp_path, learning_seed):
    path, start = tool_start
    _, after = tool_stage(algorithm, path, str(tmp_path), seed=learning_seed, **QUIET)
    print(f"{algorithm} with tools: accuracy {start.accuracy:.3f} -> {after.accuracy:.3f}, tool use {start.tool_use:.3f} -> {after.tool_use:.3f}")
    return start, after


# Not in the learning tier yet: two runs of ten failed (2 threads: seed 2's start called the tool
# with the wrong numbers in 70% of episodes, +14; seed 3's copied no tool result, +0.25; README,
# "Measured results").
@pytest.mark.slow
def test_grpo_learns_to_call_the_tool(tool_start, tmp_path, learning_seed):
    start, after = _learns("grpo", tool_start, tmp_path, learning_seed)
    # measured +35.75 to +47.25 points in 8 runs (seeds 0-4 x 1 thread, seeds 0, 1, 4 x 2); the demo promises +30
    assert after.accuracy >= start.accuracy + 0.25, (start.accuracy, after.accuracy)
    # measured ~47% -> 91.75-95.5% of episodes calling multiply (+43.5 to +50.25), same runs
    assert after.tool_use >= start.tool_use + 0.3, (start.tool_use, after.tool_use)


# Also over the learning tier's time per test (tests/README.md): 120 steps of 64 episodes, minutes.
@pytest.mark.slow
def test_ppo_learns_to_call_the_tool(tool_start, tmp_path, learning_seed):
    start, after = _learns("ppo", tool_start, tmp_path, learning_seed)
    # measured +34.5 to +47.5 points (seeds 0-4 x 1 thread, seeds 0, 1 x 2); the demo promises +30
    assert after.accuracy >= start.accuracy + 0.25, (start.accuracy, after.accuracy)
    # measured ~47% -> 88-96.75% of episodes calling multiply (+41.25 to +48.5), same runs
    assert after.tool_use >= start.tool_use + 0.3, (start.tool_use, after.tool_use)
