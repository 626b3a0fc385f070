"""Bad-input corpus, part 3: the command line. A user error prints one line on stderr naming the
problem and exits with status 2, with no traceback; a bug (or ``--debug``) shows the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posttrain.cli import main
from posttrain.errors import ConfigError


def _data(tmp_path, rows, name="rows.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


ROWS = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]

# (argv with {model}, {data}, {tmp} placeholders, fragments the one-line message must contain)
CASES = [
    (["sft", "learning_rate=fast"], ["'learning_rate' must be a number", "'fast'"]),
    (["sft", "learning_rte=1e-4"], ["unknown option 'learning_rte'", "learning_rate"]),
    (["sft", "max_steps=-5"], ["'max_steps' must be in [0, inf)"]),
    (["dpo", "beta=-1"], ["'beta' must be in (0, inf)"]),
    (["kto", "desirable_weight=-1"], ["'desirable_weight'"]),
    (["sft", "packing=true", "padding_free=true"], ["'packing' and 'padding_free'"]),
    (["sft", "--config", "{tmp}/missing.yaml"], ["config file", "missing.yaml does not exist"]),
    (["sft", "--config", "{tmp}/bad.yaml"], ["bad.yaml, line", "invalid YAML"]),
    (["sft", "model={model}"], ["no data given", "train_data"]),
    (["sft", "train_data={data}"], ["no model given"]),
    (["sft", "model={tmp}/no-model", "train_data={data}"], ["no model at", "no-model"]),
    (["sft", "model={model}", "train_data={tmp}/missing.jsonl"], ["train_data: no such file", "missing.jsonl"]),
    (["sft", "model={model}", "train_data={tmp}/broken.jsonl"], ["broken.jsonl, line 2", "not valid JSON"]),
    (["sft", "model={model}", "train_data={tmp}/empty_row.jsonl"], ["row 1, field 'completion': empty text"]),
    (["dpo", "model={model}", "train_data={data}"], ["expected preference rows", "chosen"]),
    (["inspect", "model={model}", "train_data={tmp}/rows.txt"], ["unsupported file type '.txt'"]),
    (["inspect", "model={model}"], ["no train_data to inspect"]),
    (["report", "{tmp}"], ["no metrics at", "metrics.jsonl"]),
    (["grpo", "num_generations=1"], ["num_generations must be >= 2"]),
    (["grpo", "scale_rewards=sometimes"], ["scale_rewards"]),
    (["ppo", "target_kl=0"], ["target_kl must be > 0"]),
    (["grpo", "model={model}", "train_data={data}", "reward_funcs=[no_such_reward]", "num_generations=2"], ["unknown reward 'no_such_reward'"]),
]


@pytest.fixture
def placeholders(tmp_path, model_path):
    (tmp_path / "bad.yaml").write_text("learning_rate: [1e-4\nmax_steps: 2\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    (tmp_path / "rows.txt").write_text("1+1=2\n")
    _data(tmp_path, [ROWS[0], {"prompt": "2+2=", "completion": " "}], "empty_row.jsonl")
    return {"model": model_path("llama"), "data": _data(tmp_path, ROWS), "tmp": str(tmp_path)}


@pytest.mark.parametrize("argv, fragments", CASES, ids=[" ".join(case[0][:2]) for case in CASES])
def test_user_error_is_one_line_and_exit_code_2(argv, fragments, placeholders, capsys):
    argv = [arg.format(**placeholders) for arg in argv] + (["progress_bar=false"] if argv[0] in ("sft", "dpo", "kto", "grpo") else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"posttrain {argv[0]}: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_debug_shows_where_a_user_error_was_raised(capsys):
    with pytest.raises(ConfigError, match="'learning_rate' must be a number"):
        main(["--debug", "sft", "learning_rate=fast"])
    with pytest.raises(ConfigError):
        main(["sft", "learning_rate=fast", "--debug"])


def test_a_bug_is_not_hidden(monkeypatch):
    # an exception that is not a user error propagates with its traceback
    from posttrain import config

    def broken(*args, **kwargs):
        raise KeyError("a bug in posttrain")

    monkeypatch.setattr(config, "load_config", broken)
    with pytest.raises(KeyError, match="a bug in posttrain"):
        main(["sft", "learning_rate=1e-4"])


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    # the real process: exit status and stderr as a shell sees them
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "posttrain", "sft", "warmup_ratio=5"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "posttrain sft: error: option 'warmup_ratio' must be in [0, 1], got 5.0 "
        "(Warm-up length as a fraction of all optimizer steps (ignored if warmup_steps > 0).)"
    )
    assert done.stdout == ""
