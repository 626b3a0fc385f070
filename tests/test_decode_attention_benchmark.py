"""``benchmarks/decode_attention.py`` in a fresh process: both variants of one decoding step's
attention compute the same values (to float32 rounding) and report a time."""

from __future__ import annotations

import json


def test_both_variants_agree_and_are_timed(tmp_path, run_benchmark):
    output = tmp_path / "decode_attention.json"
    run_benchmark("decode_attention.py", output, "--filled", "12", "--slots", "20", "--steps", "1", "--force")
    results = {r["variant"]: r for r in json.loads(output.read_text())["results"]}
    assert set(results) == {"sdpa", "baddbmm"}
    assert results["sdpa"]["max_abs_difference"] == 0.0
    assert results["baddbmm"]["max_abs_difference"] < 1e-5  # softmax weights and values of order 1
    assert all(r["ms_per_layer"] > 0 for r in results.values())
