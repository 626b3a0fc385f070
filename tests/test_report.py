"""``posttrain report``: charts from metrics.jsonl, grouped per metric family, several runs
overlaid, and a one-page report.md with the config."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from posttrain.cli import main
from posttrain.report import chart_groups, read_run, write_report


def _run(directory, records, config):
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory


def _dpo_records(scale: float):
    records = []
    for step in range(1, 11):
        records.append({"step": step, "time": step * 0.1, "loss": scale * (0.69 - 0.05 * step), "learning_rate": 1e-6, "grad_norm": 1.0 / step,
                        "rewards/chosen": 0.01 * step, "rewards/rejected": -0.01 * step, "rewards/margins": 0.02 * step,
                        "rewards/accuracies": min(1.0, 0.5 + 0.05 * step), "logps/chosen": -20.0 + step, "logps/rejected": -20.0 - step,
                        "epoch": step / 10, "tokens_seen": 100.0 * step, "tokens_per_second": 500.0})
        if step % 5 == 0:
            records.append({"step": step, "time": step * 0.1, "eval/loss": scale * (0.7 - 0.04 * step), "eval/rewards/accuracies": 0.6})
    return records


def test_groups_follow_metric_families():
    names = ["loss", "eval/loss", "learning_rate", "grad_norm", "rewards/chosen", "eval/rewards/margins", "logps/chosen",
             "loss/turn_0", "loss/turn_7+", "token_accuracy", "kl", "completion_length", "epoch", "tokens_seen", "tokens_per_second"]
    assert chart_groups(names) == {
        "training": ["loss", "learning_rate", "grad_norm"],
        "metrics": ["completion_length", "kl", "token_accuracy", "tokens_per_second"],
        "logps": ["logps/chosen"],
        "loss_per_turn": ["loss/turn_0", "loss/turn_7+"],
        "rewards": ["rewards/chosen", "rewards/margins"],
    }


def test_a_step_logged_twice_keeps_its_last_value(tmp_path):
    # a run resumed from a checkpoint logs the steps after the checkpoint again
    run = _run(tmp_path / "run", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.9}, {"step": 3, "loss": 1.5}], {})
    assert read_run(run).series["loss"] == [(1, 3.0), (2, 1.9), (3, 1.5)]


def test_one_run_report_has_charts_and_config(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run(tmp_path / "dpo-run", _dpo_records(1.0), {"beta": 0.1, "learning_rate": 1e-6})
    report = write_report([run])
    assert report.page == run / "report.md" and report.note is None
    assert sorted(chart.name for chart in report.charts) == ["logps.png", "metrics.png", "rewards.png", "training.png"]
    for chart in report.charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    page = report.page.read_text()
    assert "# Training report: dpo-run" in page and "![rewards](plots/rewards.png)" in page
    assert "beta: 0.1" in page and "| dpo-run | 10 |" in page and "0.3 (step 10)" in page


def _colour_pixels(path, rgb) -> int:
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    target = [channel / 255 for channel in rgb]
    return int(((abs(pixels - target) < 0.02).all(axis=-1)).sum())


def test_several_runs_are_overlaid_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    first = _run(tmp_path / "beta-0.1", _dpo_records(1.0), {"beta": 0.1, "seed": 1})
    second = _run(tmp_path / "beta-0.5", _dpo_records(0.5), {"beta": 0.5, "seed": 1})
    out = tmp_path / "comparison"
    assert main(["report", str(first), str(second), "--out", str(out)]) == 0
    assert f"wrote {out / 'report.md'} and 4 chart(s)" in capsys.readouterr().out
    page = (out / "report.md").read_text()
    assert "# Training report: beta-0.1 vs beta-0.5" in page
    assert "| beta | `0.1` | `0.5` |" in page and "| seed |" not in page  # only the options that differ
    # each run draws in its own colour: blue for the first, red for the second
    training = out / "plots" / "training.png"
    assert _colour_pixels(training, (0x1F, 0x77, 0xB4)) > 100 and _colour_pixels(training, (0xD6, 0x27, 0x28)) > 100


def test_without_matplotlib_the_page_is_written_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "posttrain.report_plots", None)  # import fails as if matplotlib were missing
    run = _run(tmp_path / "run", _dpo_records(1.0), {"beta": 0.1})
    report = write_report([run])
    assert report.charts == [] and "matplotlib is not installed" in report.note
    assert "matplotlib is not installed" in report.page.read_text()
