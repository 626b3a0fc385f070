"""The ``posttrain`` command line: a YAML config plus key=value overrides."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from posttrain.cli import main
from posttrain.tasks import ArithmeticTask


def test_sft_and_inspect_from_yaml(model_path, tmp_path, capsys):
    data = tmp_path / "conversations.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in ArithmeticTask().conversations("train", 20, turns=2)))
    config = tmp_path / "sft.yaml"
    output = tmp_path / "run"
    config.write_text(yaml.safe_dump({"model": model_path("llama"), "train_data": str(data), "loss_mode": "assistant", "output_dir": str(output), "max_steps": 2}))

    assert main(["inspect", "--config", str(config), "--rows", "1"]) == 0
    shown = capsys.readouterr().out
    assert "<|im_end|>" in shown and "loss_mode assistant" in shown

    assert main(["sft", "--config", str(config), "learning_rate=1e-3", "logging_steps=1", "progress_bar=false"]) == 0
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and "loss/turn_1" in lines[0]
    assert (output / "final" / "config.json").exists()
    assert yaml.safe_load((output / "config.yaml").read_text())["learning_rate"] == 1e-3


def test_help_config_lists_options(capsys):
    assert main(["sft", "--help-config"]) == 0
    assert "turn_weights" in capsys.readouterr().out


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return str(path)


def test_inspect_preference_and_unpaired_rows(model_path, tmp_path, capsys):
    task = ArithmeticTask(seed=0)
    pairs = _jsonl(tmp_path / "pairs.jsonl", task.preference_pairs("train", 3))
    unpaired = _jsonl(tmp_path / "unpaired.jsonl", task.unpaired("train", 3))
    first = task.preference_pairs("train", 1)[0]
    for algorithm, data, model, expected in [
        ("dpo", pairs, "llama", ["chosen: ", "rejected: ", first["rejected"].strip()]),
        ("rm", pairs, "classifier-llama", ["chosen: ", "rejected: "]),
        ("kto", unpaired, "llama", ["desirable", "undesirable"]),
    ]:
        args = ["inspect", "--algorithm", algorithm, f"model={model_path(model)}", f"train_data={data}", "--rows", "2"]
        assert main(args) == 0, algorithm
        shown = capsys.readouterr().out
        assert all(text in shown for text in expected), (algorithm, shown)
        # the causal backbones get an EOS after each completion (the encoder default is covered in test_reward)
        assert "<|endoftext|>" in shown, algorithm


def test_pipeline_demo_runs_every_stage_into_one_table(tmp_path, capsys):
    # wiring only (--steps 2 caps every stage); the learning tests check what each stage learns
    assert main(["demo", "--algorithm", "pipeline", "--steps", "2", "--output-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in ("SFT", "noisy start", "DPO", "GRPO", "PPO", "DISTILL", "mean RM score", "pairwise accuracy"))
    for stage in ("sft", "noisy", "rm", "dpo", "grpo", "ppo", "distill"):
        assert (tmp_path / stage / "final").is_dir(), stage


@pytest.mark.parametrize("algorithm", ["kto", "grpo", "distill"])
def test_demo_from_the_noisy_start_runs_every_stage(algorithm, tmp_path, capsys):
    # wiring only (--steps 3 caps every stage); tests/algorithms/test_*_learns.py check that they learn
    args = ["demo", "--algorithm", algorithm, "--steps", "3", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "after noisy SFT" in shown and f"after {algorithm.upper()}" in shown and "promise" in shown
    for stage in ("sft/clean/final", "sft/final", f"{algorithm}/final"):
        assert (tmp_path / stage).is_dir(), stage


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_inspect_prompts_shows_what_the_policy_is_prompted_with(algorithm, model_path, tmp_path, capsys):
    rows = ArithmeticTask(seed=0).prompt_only("train", 3)
    data = _jsonl(tmp_path / "prompts.jsonl", rows)
    args = ["inspect", "--algorithm", algorithm, f"model={model_path('llama')}", f"train_data={data}", "system_prompt=Add.", "--rows", "2"]
    assert main(args) == 0
    shown = capsys.readouterr().out
    # the system prompt turned each string prompt into a conversation rendered with the
    # generation prompt (ChatML here); the answer column is what the reward functions receive
    assert "Add." in shown and rows[1]["prompt"] in shown and "<|im_start|>" in shown
    assert f"answer = '{rows[1]['answer']}'" in shown and "0 trained" in shown and "3 prompts" in shown


def test_inspect_eval_split_shows_the_rows_eval_fraction_holds_out(model_path, tmp_path, capsys):
    from posttrain.data.loading import split_rows

    rows = ArithmeticTask(seed=0).prompt_completion("train", 20)
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    held_out = split_rows(rows, 0.1, 42)[1]
    assert main(["inspect", f"model={model_path('llama')}", f"train_data={data}", "eval_fraction=0.1", "seed=42", "--split", "eval"]) == 0
    shown = capsys.readouterr().out
    assert all(row["prompt"] in shown for row in held_out)
    assert "2 row(s)" in shown


def test_inspect_reads_a_directory_of_shards_and_marks_trained_tokens_without_colour(model_path, tmp_path, capsys):
    rows = ArithmeticTask(seed=0).prompt_completion("train", 4)
    shards = tmp_path / "shards"
    shards.mkdir()
    _jsonl(shards / "part-0000.jsonl", rows[:2])
    _jsonl(shards / "part-0001.jsonl", rows[2:])
    assert main(["inspect", f"model={model_path('llama')}", f"train_data={shards}", "--rows", "4"]) == 0
    shown = capsys.readouterr().out  # captured: no terminal, so no colour
    assert "4 row(s) -> 4 example(s)" in shown  # both shards, in name order
    for row in rows:
        assert f"{row['prompt']}[[{row['completion']}<|endoftext|>]]" in shown  # the completion and EOS are trained
    assert "[[trained]]" in shown  # the legend says so


@pytest.mark.parametrize("demo, online", [("tools", "grpo"), ("tools-ppo", "ppo")])
def test_tools_demo_runs_every_stage_and_reports_each_copying_round(demo, online, tmp_path, capsys, monkeypatch):
    # wiring only (--steps 1 caps every stage and allows one round each; 4 held-out problems x 1
    # episode); tests/algorithms/test_tools_learns.py checks that the recipe learns
    from posttrain import demo_tools

    monkeypatch.setattr(demo_tools, "TOOLS_EVAL_ROWS", 4)
    monkeypatch.setattr(demo_tools, "TOOLS_EVAL_SAMPLES", 1)
    assert main(["demo", "--algorithm", demo, "--steps", "1", "--output-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"copying after each round \(sentence: \d+%; tool_result: \d+%; episode: \d+%\)", shown), shown
    assert "after SFT" in shown and f"after {online.upper()}" in shown and "promise" in shown
    for stage in ("sft/copy/sentence-0/final", "sft/copy/tool_result-0/final", "sft/final", f"{online}/final"):
        assert (tmp_path / stage).is_dir(), stage
