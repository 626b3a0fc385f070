"""``benchmarks/activation_memory.py --tiny``: the memory accounting's code path on a toy Qwen2, in a
fresh process (~20 s on 2 busy cores, most of it imports), so the full-size run is known to work and
its figures to mean what they say."""

from __future__ import annotations

import json
import math

import pytest

CONFIGS = ("baseline", "bf16_weights")
LAYOUTS = ("padded", "packed")
HIDDEN = 64  # the --tiny model's width


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, run_benchmark):
    output = tmp_path_factory.mktemp("activation-memory") / "results.json"
    done = run_benchmark("activation_memory.py", output, "--tiny")
    assert "Estimated GPU peak" in done.stdout
    return json.loads(output.read_text())


def _measurement(report, config, checkpointing, layout, longer=True):
    lengths = sorted({m["length"] for m in report["measurements"]})
    length = lengths[-1] if longer else lengths[0]
    (found,) = [m for m in report["measurements"] if (m["config"], m["checkpointing"], m["layout"], m["length"]) == (config, checkpointing, layout, length)]
    return found


def _estimate(report, config, checkpointing, layout):
    (found,) = [e for e in report["estimates"] if (e["config"], e["checkpointing"], e["layout"]) == (config, checkpointing, layout)]
    return found


def test_every_configuration_is_measured_and_estimated(tiny_report):
    assert "not a GPU measurement" in tiny_report["note"]
    for field in ("shape", "parameters", "chunk_size", "chunk_logits_float32_bytes", "target", "measurements", "estimates"):
        assert field in tiny_report, field
    expected = {(c, k, layout) for c in CONFIGS for k in (False, True) for layout in LAYOUTS}
    assert {(m["config"], m["checkpointing"], m["layout"]) for m in tiny_report["measurements"]} == expected
    assert {(e["config"], e["checkpointing"], e["layout"]) for e in tiny_report["estimates"]} == expected
    assert len(tiny_report["measurements"]) == 2 * len(expected)  # two lengths each
    for m in tiny_report["measurements"]:
        for field in ("per_layer_bytes_per_position", "other_bytes_per_position", "head_bytes_per_trained_token", "activation_bytes", "saved_bytes_by_kind", "live_after_forward_bytes"):
            assert field in m, field
        assert m["per_layer_bytes_per_position"] > 0 and m["other_bytes_per_position"] > 0 and m["head_bytes_per_trained_token"] > 0
        # parameters are saved for backward (norm weights) but reported apart, never as activations
        assert m["saved_bytes_by_kind"].get("parameter", 0) > 0
    for e in tiny_report["estimates"]:
        assert math.isfinite(e["estimated_peak_gib"]) and e["estimated_peak_bytes"] > e["activation_bytes"] > 0
        assert e["estimated_peak_bytes"] <= e["additive_peak_bytes"] + 1  # the phase-aware peak never exceeds the sum of everything


def test_per_position_figures_do_not_depend_on_the_length(tiny_report):
    for c in CONFIGS:
        for k in (False, True):
            for layout in LAYOUTS:
                short, long = (_measurement(tiny_report, c, k, layout, longer) for longer in (False, True))
                assert short["per_layer_bytes_per_position"] == pytest.approx(long["per_layer_bytes_per_position"], rel=1e-6)
                assert short["head_bytes_per_trained_token"] == pytest.approx(long["head_bytes_per_trained_token"], rel=0.05)
                # sdpa takes its flash kernel on CPU: nothing per head grows with T^2
                assert long["t2_per_head_bytes"] == 0


def test_checkpointing_and_bf16_weights_save_activations(tiny_report):
    for c in CONFIGS:
        for layout in LAYOUTS:
            off, on = (_measurement(tiny_report, c, k, layout) for k in (False, True))
            assert on["activation_bytes"] < off["activation_bytes"]
            assert on["per_layer_bytes_per_position"] < off["per_layer_bytes_per_position"]
            # with checkpointing a layer keeps only its input: the hidden state in the weights' dtype
            assert on["per_layer_bytes_per_position"] == HIDDEN * (4 if c == "baseline" else 2)
            assert _estimate(tiny_report, c, True, layout)["activation_bytes"] < _estimate(tiny_report, c, False, layout)["activation_bytes"]
    for layout in LAYOUTS:
        baseline, bf16 = (_measurement(tiny_report, c, False, layout) for c in CONFIGS)
        assert bf16["activation_bytes"] < baseline["activation_bytes"]
        assert bf16["per_layer_bytes_per_position"] < baseline["per_layer_bytes_per_position"]


def test_autocast_copies_only_under_autocast_and_the_packed_mask_is_counted(tiny_report):
    for layout in LAYOUTS:
        assert _measurement(tiny_report, "baseline", False, layout)["saved_bytes_by_kind"].get("autocast_copy", 0) > 0
        assert _measurement(tiny_report, "bf16_weights", False, layout)["saved_bytes_by_kind"].get("autocast_copy", 0) == 0
    for c in CONFIGS:
        padded, packed = (_measurement(tiny_report, c, False, layout) for layout in LAYOUTS)
        assert padded["per_layer_t2_bytes_per_row_length_squared"] == 0
        # the block-diagonal mask of packed rows, one bf16 (B, 1, T, T) copy per layer
        assert packed["per_layer_t2_bytes_per_row_length_squared"] == pytest.approx(2.0)


def test_saved_tensors_account_for_what_is_live_after_the_forward(tiny_report):
    for m in tiny_report["measurements"]:
        # the live bytes after the forward are the saved tensors plus the small outputs
        assert m["live_after_forward_bytes"] == pytest.approx(m["saved_bytes_excluding_parameters"], rel=0.05)
