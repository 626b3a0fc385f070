"""``benchmarks/gpu_throughput.py --tiny``: the GPU benchmark's code path, run on CPU in a fresh
process (~20 s on 2 busy cores), so the script a GPU machine runs once is known to work and to
report numbers that mean what they say."""

from __future__ import annotations

import json
import math

import pytest

RUNS = ("sft_padded", "sft_packed", "dpo_padded")
VARIANTS = ("baseline", "fast")

# The --tiny model, counted by hand: Qwen2, hidden 64, 2 layers, 4 query heads of 16 dimensions and
# 2 key-value heads, MLP 256, tied embeddings. Per layer: q 64x64+64, k and v 64x32+32 each,
# o 64x64, gate/up/down 3x64x256, two norms 2x64 = 61,696; two layers and the final norm 64 make
# 123,456 non-embedding parameters; the tied head is vocabulary x 64.
NON_EMBEDDING = 2 * (64 * 64 + 64 + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 256 + 2 * 64) + 64
LAYERS, HIDDEN, MAX_LENGTH = 2, 64, 64


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, run_benchmark):
    output = tmp_path_factory.mktemp("gpu-bench") / "results.json"
    done = run_benchmark("gpu_throughput.py", output, "--tiny")
    report = json.loads(output.read_text())
    # stdout ends with the same object (the trainers' own lines go to stderr)
    assert json.loads(done.stdout[done.stdout.rindex("\n{\n") :]) == report
    return report


def _vocabulary() -> int:
    from posttrain.testing import build_tokenizer

    return len(build_tokenizer("chatml"))


def test_every_run_variant_and_checkpointing_setting_is_measured(tiny_report):
    assert tiny_report["complete"] is True
    assert tiny_report["peak_dtype"] == "float32" and tiny_report["device"].startswith("cpu")
    assert math.isfinite(tiny_report["peak_flops"]) and tiny_report["peak_flops"] > 0
    measured = [(r["run"], r["variant"], r["gradient_checkpointing"]) for r in tiny_report["results"]]
    assert sorted(measured) == sorted((run, variant, ckpt) for run in RUNS for variant in VARIANTS for ckpt in (False, True))
    for result in tiny_report["results"]:
        assert "error" not in result, result
        assert math.isfinite(result["tokens_per_s"]) and result["tokens_per_s"] > 0, result
        assert 0 < result["mfu"] <= 1, result
        assert result["steps"] == 2
        assert (result["pairs_per_s"] is not None) == (result["run"] == "dpo_padded")
        if result["pairs_per_s"] is not None:
            assert math.isfinite(result["pairs_per_s"]) and result["pairs_per_s"] > 0
        assert result["memory_source"] in ("cpu_peak_rss_growth", None)
        assert (result["peak_memory_gib"] is None) == (result["memory_source"] is None)
        if result["peak_memory_gib"] is not None:
            assert result["peak_memory_gib"] >= 0
        # never a CUDA-only kernel on CPU
        assert result["options"].get("attn_implementation", "sdpa") == "sdpa"


def test_mfu_counts_six_flops_per_parameter_including_the_head_plus_attention(tiny_report):
    parameters = NON_EMBEDDING + _vocabulary() * HIDDEN
    for result in tiny_report["results"]:
        # MFU is the counted model FLOPs per token at the measured rate over the peak
        achieved = result["mfu"] * tiny_report["peak_flops"]
        assert achieved == pytest.approx(result["flops_per_token"] * result["tokens_per_s"], rel=1e-9)
        # training is 6N per token; DPO adds the reference's forward (2N), 8/6 of it in all
        per_token = result["flops_per_token"] * (6 / 8 if result["run"] == "dpo_padded" else 1)
        attention = per_token - 6 * parameters
        # 12 x layers x hidden x the context of the token's example, which is 1..max_length
        assert 12 * LAYERS * HIDDEN * 1 <= attention <= 12 * LAYERS * HIDDEN * MAX_LENGTH, result


def test_first_loss_is_that_of_a_random_model_and_independent_of_checkpointing(tiny_report):
    results = {(r["run"], r["variant"], r["gradient_checkpointing"]): r["first_loss"] for r in tiny_report["results"]}
    uniform = math.log(_vocabulary())  # a freshly initialised LM predicts close to uniformly
    for (run, variant, checkpointing), loss in results.items():
        assert math.isfinite(loss)
        if run == "dpo_padded":
            # the reference is a copy of the policy: every log-ratio is 0 and -log sigmoid(0) = ln 2
            assert loss == pytest.approx(math.log(2), abs=1e-3)
        else:
            assert abs(loss - uniform) <= 0.3 * uniform, (run, variant, loss, uniform)
        if checkpointing:
            # same weights, same first batch: recomputing activations changes nothing
            assert loss == pytest.approx(results[(run, variant, False)], abs=1e-4)
    for run in RUNS:
        for checkpointing in (False, True):
            # bf16 weights round the same model: the same loss to well under 1%
            assert results[(run, "fast", checkpointing)] == pytest.approx(results[(run, "baseline", checkpointing)], rel=1e-2)


def test_sharded_variant_runs_alone_and_starts_from_the_baseline_loss(tiny_report, run_benchmark, tmp_path):
    """``--variant sharded`` (what gpu_check.sh runs on one GPU): FSDP2 at world size 1 trains SFT
    and DPO (its reference sharded too) from the same first loss as the unsharded baseline."""
    done = run_benchmark("gpu_throughput.py", tmp_path / "sharded.json", "--tiny", "--variant", "sharded", "--runs", "sft_padded,dpo_padded", "--checkpointing", "off")
    assert done.stderr.count("FSDP2: parameters sharded over 1 process(es)") == 2
    report = json.loads((tmp_path / "sharded.json").read_text())
    baseline = {r["run"]: r["first_loss"] for r in tiny_report["results"] if r["variant"] == "baseline" and not r["gradient_checkpointing"]}
    assert sorted(r["run"] for r in report["results"]) == ["dpo_padded", "sft_padded"]
    for result in report["results"]:
        assert "error" not in result, result
        assert result["options"]["fsdp"] is True
        assert result["first_loss"] == pytest.approx(baseline[result["run"]], rel=1e-5)
