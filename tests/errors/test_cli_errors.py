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
    # issue 20: what a TRL user brings, each refused before any model loads (the model path does
    # not exist: a check made after loading would report that instead)
    (["sft", "{tmp}/sft.yaml"], ["override '{tmp}/sft.yaml' is not key=value", "pass --config {tmp}/sft.yaml"]),
    (["sft", "model={tmp}/no-model", "train_data={data}", "output_dir={tmp}/finished"], ["already holds a finished run", "another output_dir", "overwrite_output_dir=true"]),
    (["sft", "model={tmp}/no-model", "train_data={data}", "output_dir={tmp}/unfinished"], ["unfinished run with checkpoints (newest: checkpoint-2)", "resume_from_checkpoint=latest"]),
    (["sft", "model={tmp}/no-model", "train_data={data}", "output_dir={tmp}/out", "resume_from_checkpoint={tmp}/nothing"], ["is not a checkpoint (no trainer_state.json)"]),
    (["grpo", "model={tmp}/no-model", "use_vllm=true"], ["use_vllm=True is not available"]),
    (["sft", "model={tmp}/no-model", "eval_strategy=epoch"], ["eval_strategy='epoch' has no counterpart", "eval_steps=N"]),
    (["sft", "model={tmp}/no-model", "optim=adamw_8bit"], ["optim='adamw_8bit' is not available"]),
    (["dpo", "model={tmp}/no-model", "rpo_alpha=0.5"], ["loss_type=[sigmoid, nll] with loss_weights=[1.0, 0.5]"]),
    (["sft", "model={tmp}/no-model", "report_to=nonsense"], ["'nonsense' is not a tracker accelerate serves"]),
    (["sft", "model={tmp}/no-model", "lr_scheduler=cosine_with_warmup"], ["unknown schedule 'cosine_with_warmup'"]),
    (["sft", "model={tmp}/no-model", "warmup_steps=0.1"], ["warmup_ratio=0.1"]),
    (["sft", "model={tmp}/no-model", "hub_token=hf_abc"], ["hub_token is not an option"]),
    (["sft", "model={tmp}/no-model", "learnig_rate=1e-4"], ["unknown option 'learnig_rate'", "learning_rate"]),
    (["ppo", "model={tmp}/no-model", "batch_size=12", "per_device_train_batch_size=8"], ["batch_size = 12", "must be a multiple"]),
    (["sft", "model={model}", "train_data={tmp}/empty_dir"], ["the directory", "holds no .jsonl"]),
    (["inspect", "model={model}", "train_data={tmp}/two_users.jsonl", "chat_template={tmp}/strict.jinja"], ["row 1, field 'messages': the chat template refused this conversation", "roles must alternate"]),
]


@pytest.fixture
def placeholders(tmp_path, model_path):
    (tmp_path / "bad.yaml").write_text("learning_rate: [1e-4\nmax_steps: 2\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    (tmp_path / "rows.txt").write_text("1+1=2\n")
    _data(tmp_path, [ROWS[0], {"prompt": "2+2=", "completion": " "}], "empty_row.jsonl")
    (tmp_path / "sft.yaml").write_text("max_steps: 2\n")
    for name in ("finished", "unfinished/checkpoints/checkpoint-2", "empty_dir", "nothing"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "finished" / "trainer_state.json").write_text("{}")
    (tmp_path / "unfinished" / "config.yaml").write_text("")
    (tmp_path / "unfinished" / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    turn = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    _data(tmp_path, [{"messages": list(turn)}, {"messages": [turn[0], turn[0], turn[1]]}], "two_users.jsonl")
    (tmp_path / "strict.jinja").write_text(
        "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return {"model": model_path("llama"), "data": _data(tmp_path, ROWS), "tmp": str(tmp_path)}


@pytest.mark.parametrize("argv, fragments", CASES, ids=[" ".join(case[0][:2]) for case in CASES])
def test_user_error_is_one_line_and_exit_code_2(argv, fragments, placeholders, capsys):
    argv = [arg.format(**placeholders) for arg in argv] + (["progress_bar=false"] if argv[0] in ("sft", "dpo", "kto", "grpo") else [])
    fragments = [fragment.format(**placeholders) for fragment in fragments]
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


def test_a_missing_reward_package_is_named_before_the_model_loads(placeholders, monkeypatch, capsys):
    # the GRPO recipe's math_verify_accuracy reward without math-verify installed
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "math_verify" else real(name, *args))
    argv = ["grpo", f"model={placeholders['tmp']}/no-model", f"train_data={placeholders['data']}", "reward_funcs=[math_verify_accuracy]"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "posttrain grpo: error: reward_funcs[0]: the math_verify_accuracy reward needs the math-verify package, which is not "
        "installed. Fix: pip install 'posttrain[math]' (or pip install math-verify)"
    ]


def test_push_to_hub_without_a_reachable_hub_is_refused_before_the_model_loads(placeholders, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = ["sft", f"model={placeholders['tmp']}/no-model", f"train_data={placeholders['data']}", "push_to_hub=true", f"output_dir={placeholders['tmp']}/out"]
    assert main(argv) == 2
    assert "push_to_hub=true, but HF_HUB_OFFLINE is set" in capsys.readouterr().err
