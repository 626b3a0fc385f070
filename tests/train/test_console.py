"""What a user sees while training: our console only (no third-party progress bars), metric
lines for people, and a summary at the end."""

from __future__ import annotations

import json
import re

import pytest

from posttrain.algorithms.sft import SFTConfig, SFTTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.train.summary import RunSummary, format_metrics

THIRD_PARTY = ("Loading weights", "Generating train split", "tokenizing", "Filter", "Map", "Writing model shards", "it/s]", "examples/s]", "\r")


@pytest.fixture
def bars_on(monkeypatch):
    """Third-party progress bars switched on, as on a user's machine (the test session turns
    datasets' off through its environment variable)."""
    import importlib

    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    datasets_tqdm = importlib.import_module("datasets.utils.tqdm")  # the attribute of that name is a class

    switches = [
        (lambda: not datasets_tqdm.are_progress_bars_disabled(), datasets_tqdm.enable_progress_bars, datasets_tqdm.disable_progress_bars),
        (transformers_logging.is_progress_bar_enabled, transformers_logging.enable_progress_bar, transformers_logging.disable_progress_bar),
        (lambda: not hub_utils.are_progress_bars_disabled(), hub_utils.enable_progress_bars, hub_utils.disable_progress_bars),
    ]
    before = [enabled() for enabled, _, _ in switches]
    monkeypatch.setattr(datasets_tqdm, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    for _, enable, _ in switches:
        enable()
    yield
    for was_enabled, (_, enable, disable) in zip(before, switches):
        (enable if was_enabled else disable)()  # as the session had them, for the tests that follow


def test_training_console_has_no_third_party_bars_and_ends_with_the_summary(bars_on, model_path, tmp_path, capfd):
    import datasets

    model = model_path("llama")  # built (and saved) before the capture starts
    # the capture sees a datasets bar when nothing silences it
    datasets.Dataset.from_list([{"a": 1}]).map(lambda row: row, desc="tokenizing control")
    assert "tokenizing control" in capfd.readouterr().err

    data = tmp_path / "rows.jsonl"  # read through datasets ("Generating train split")
    data.write_text("\n".join(json.dumps(row) for row in ArithmeticTask(seed=0).prompt_completion("train", 24)))
    config = SFTConfig(
        output_dir=str(tmp_path / "run"), train_data=str(data), eval_fraction=0.25, max_steps=4, logging_steps=1,
        per_device_train_batch_size=4, learning_rate=1e-3, max_length=32, mixed_precision="no",
    )
    SFTTrainer(model, config).train()  # a path: "Loading weights"; saving: "Writing model shards"
    captured = capfd.readouterr()
    shown = captured.out + captured.err
    for noise in THIRD_PARTY:
        assert noise not in shown, (noise, shown)

    lines = [line for line in captured.out.splitlines() if line.strip()]
    steps = [line for line in lines if line.startswith("step ") and "| loss " in line]
    assert [line.split(" |")[0] for line in steps] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    # the first interval has no rate (it would include start-up); later ones give whole tokens/s
    assert "tok/s" not in steps[0] and all(re.search(r"\| tok/s [\d,]+$", line) for line in steps[1:])
    assert all(re.search(r"\| lr \d\.\d\de[-+]\d\d \|", line) for line in steps)
    columns = [[part.split(" ")[0] for part in line.split(" | ")[1:]] for line in steps[1:]]
    assert all(order == columns[0] for order in columns), "the column order changes between lines"

    summary = lines[lines.index(next(line for line in lines if "run summary" in line)):]
    assert summary[1].startswith("steps    4/4 in ") and "tokens" in summary[1]
    assert any(line.startswith("best     eval/loss ") for line in summary)
    places = dict(line.split(None, 1) for line in summary if line.split(None, 1)[0] in ("model", "metrics", "config", "report"))
    assert places["model"] == str(tmp_path / "run" / "final") and places["report"] == str(tmp_path / "run" / "report.md")
    assert lines[-1] == f"report   {tmp_path / 'run' / 'report.md'}"


def test_metric_line_format():
    line = format_metrics(
        20,
        {"tokens_per_second": 1234.56, "grad_norm": 0.812345, "loss": 1.23456, "learning_rate": 1.9e-5, "zeta": 12345.678,
         "epoch": 0.25, "tokens_seen": 12345.0, "rewards/margins": -0.000123456, "eval/loss": float("nan")},
        100,
    )
    assert line == (
        "step 20/100 | loss 1.235 | eval/loss nan | lr 1.90e-05 | grad_norm 0.8123 | rewards/margins -0.0001235 "
        "| zeta 1.235e+04 | epoch 0.25 | tokens 12,345 | tok/s 1,235"
    )


def test_summary_keeps_the_best_evaluation():
    summary = RunSummary()
    summary.add(10, {"eval/loss": 2.0, "eval/token_accuracy": 0.5, "eval/entropy": 3.0})
    summary.add(20, {"eval/loss": 1.5, "eval/token_accuracy": 0.4, "eval/entropy": 1.0})
    summary.add(30, {"eval/loss": 1.7, "eval/token_accuracy": 0.6})
    assert summary.best == {"eval/loss": (1.5, 20), "eval/token_accuracy": (0.6, 30)}  # entropy: no "better" direction
    assert summary.last["eval/loss"] == 1.7


def test_a_crowded_line_shows_the_headline_and_counts_the_rest():
    metrics = {"loss": 0.5, "learning_rate": 1e-5, "grad_norm": 1.0, "reward": 0.7, "kl": 0.01, "epoch": 0.5, "tokens_seen": 100.0,
               "completions/mean_length": 7.0, "advantages/mean": 0.0, **{f"time/part{i}": 0.1 for i in range(10)}}
    assert format_metrics(3, metrics, 10) == (
        "step 3/10 | loss 0.5 | lr 1.00e-05 | grad_norm 1 | completions/mean_length 7 | kl 0.01 | reward 0.7 | epoch 0.5 "
        "| tokens 100 | +11 in metrics.jsonl"  # advantages/mean and the 10 time/ parts
    )


def _quiet(tmp_path, **values):
    return dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, logging_steps=1, progress_bar=False, save_final_model=False, **values)


def test_per_turn_losses_are_logged_for_conversations_only(model_path, tmp_path):
    task = ArithmeticTask(seed=0)
    plain = SFTTrainer(model_path("llama"), SFTConfig(**_quiet(tmp_path / "plain")), train_dataset=task.prompt_completion("train", 4))
    chat = SFTTrainer(model_path("llama"), SFTConfig(**_quiet(tmp_path / "chat", loss_mode="assistant")), train_dataset=task.conversations("train", 4, turns=2))
    assert not any(name.startswith("loss/turn") for name in plain.train().log_history[0])
    assert {"loss/turn_0", "loss/turn_1"} <= set(chat.train().log_history[0])


def test_the_kto_weight_warning_is_printed_once_without_a_source_path(model_path, tmp_path, capsys, recwarn):
    from posttrain import KTOConfig, KTOTrainer

    rows = [dict(row, label=True) for row in ArithmeticTask(seed=0).unpaired("train", 6)] + [dict(ArithmeticTask(seed=0).unpaired("train", 1)[0], label=False)]
    KTOTrainer(model_path("llama"), KTOConfig(**_quiet(tmp_path)), train_dataset=rows)
    shown = capsys.readouterr()
    assert shown.out.count("warning:") == 1 and "outside" in shown.out.split("warning:")[1].splitlines()[0]
    assert "kto.py" not in shown.out + shown.err and not [w for w in recwarn if "KTO" in str(w.message)]
