"""``benchmarks/multi_turn_generation.py --tiny`` on 4 episodes in a fresh process: the benchmark of
issue 18's speed claim keeps working, and its two variants produce the same tokens (the script
asserts that before it reports a time)."""

from __future__ import annotations

import json


def test_the_benchmark_compares_the_same_tokens_both_ways(tmp_path, run_benchmark):
    output = tmp_path / "multi_turn.json"
    run_benchmark("multi_turn_generation.py", output, "--tiny", "--episodes", "4", "--repeats", "1", "--force")
    [result] = json.loads(output.read_text())["results"]
    # episode k makes k % 4 tool calls: 0 + 1 + 2 + 3, over at most 4 model turns
    assert (result["episodes"], result["tool_calls"], result["rounds"]) == (4, 6, 4)
    assert 0 < result["tokens_sampled_multi_turn"] < result["tokens_after_prompt"]  # tool results were inserted, not sampled
    assert result["multi_turn_seconds"] > 0 and result["single_turn_seconds"] > 0
    assert result["ratio_multi_to_single"] == result["multi_turn_seconds"] / result["single_turn_seconds"]
