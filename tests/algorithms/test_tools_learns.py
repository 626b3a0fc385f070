"""Issue 18 must-show 1: online RL with a tool the model needs. From the tool-use start (the
copying base, then SFT on demonstrations that call ``multiply`` or answer directly;
tests/conftest.py ``tool_start``), GRPO with ``tools=[multiply]`` raises held-out accuracy and
the share of episodes that call the tool. The recipe is the demo's (``posttrain demo --algorithm
tools``: :mod:`posttrain.demo_tools`).

Accuracy is that of sampled episodes (``posttrain.demo_tools.evaluate_tool_use``: 100 held-out
problems x 4 episodes at temperature 1). Thresholds follow tests/README.md (seed via
``POSTTRAIN_TEST_SEED``); the measured ranges beside them are GRPO stages from the seed-0 start
(``python benchmarks/learning_sweep.py --algorithms tools --tool-start <start>``), see the notes
on what that sweep did not cover. PPO with the tool runs (tests/algorithms/test_online_tools.py)
but its learning has not been swept yet, so it has no learning test here.
"""

from __future__ import annotations

import pytest

from posttrain.demo_tools import TOOLS_PROMISE_GAIN, tool_stage

QUIET = dict(progress_bar=False, save_final_model=False, logging_steps=0)


# Not robust yet, so not in the learning tier CI runs: with 2 threads (training seed 0) the start
# answered 0.7% right (it miscopies the tool's result) and GRPO left accuracy at 0.7% while tool
# use rose 44% -> 68% (README, "Measured results"; issue 18 open).
@pytest.mark.slow
def test_grpo_learns_to_call_the_tool(tool_start, tmp_path, learning_seed):
    path, start = tool_start
    _, after = tool_stage("grpo", path, str(tmp_path), seed=learning_seed, **QUIET)
    print(f"grpo with tools: accuracy {start.accuracy:.3f} -> {after.accuracy:.3f}, tool use {start.tool_use:.3f} -> {after.tool_use:.3f}")
    # measured 26.5% -> 53.75-58.25% (+27.25 to +31.75 points) for GRPO seeds 0-4 x 1 thread from the
    # seed-0 start; the threshold (+20 points, the demo's promise) leaves room below the worst
    assert after.accuracy >= start.accuracy + TOOLS_PROMISE_GAIN, (start.accuracy, after.accuracy)
    # measured 44.5% -> 89-91% of episodes calling multiply (+44.5 to +46.5 points), same runs
    assert after.tool_use >= start.tool_use + 0.3, (start.tool_use, after.tool_use)

