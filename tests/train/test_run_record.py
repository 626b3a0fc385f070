"""``output_dir/config.yaml`` reproduces its run: a finished run's file given to ``--config``
trains to the same metrics and weights (lists and mappings written as YAML, not as their
Python text), and a run started from Python records where its model came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from posttrain import SFTConfig, SFTTrainer
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.tasks import ArithmeticTask
from posttrain.testing import build_causal_lm, build_tokenizer


def _write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _trained(output_dir: Path) -> list[dict]:
    """The metrics of each step without the clock (wall time, tokens per second)."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in ("time", "tokens_per_second")} for record in records]


def _weights(output_dir: Path) -> dict:
    return load_file(output_dir / "final" / "model.safetensors")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_finished_runs_config_yaml_reproduces_it(model_path, tmp_path):
    # DPO with list, mapping and float options: each must come back as what it was
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ArithmeticTask(seed=2).preference_pairs("train", 8)]
    original = {
        "model": model_path("llama"), "train_data": _write_rows(tmp_path / "pairs.jsonl", rows),
        "rename_columns": {"question": "prompt", "good": "chosen", "bad": "rejected"}, "loss_type": ["sigmoid", "nll"],
        "loss_weights": [1.0, 0.25], "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1.0e-3,
        "logging_steps": 1, "progress_bar": False, "output_dir": str(tmp_path / "first"), "lr_scheduler_kwargs": {},
    }
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(original))
    assert main(["dpo", "--config", str(tmp_path / "dpo.yaml")]) == 0
    recorded = tmp_path / "first" / "config.yaml"
    assert main(["dpo", "--config", str(recorded), f"output_dir={tmp_path / 'second'}"]) == 0

    assert _trained(tmp_path / "first") == _trained(tmp_path / "second")  # same losses, rewards, lr, bit for bit
    assert _same_weights(_weights(tmp_path / "first"), _weights(tmp_path / "second"))
    written = yaml.safe_load(recorded.read_text())
    assert written["loss_type"] == ["sigmoid", "nll"] and written["rename_columns"] == original["rename_columns"]
    again = yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())
    assert {k: v for k, v in again.items() if k != "output_dir"} == {k: v for k, v in written.items() if k != "output_dir"}


def test_a_python_run_records_its_model_and_the_file_reproduces_it(model_path, tmp_path):
    path = model_path("llama")
    rows = ArithmeticTask(seed=4).prompt_completion("train", 8)
    config = SFTConfig(output_dir=str(tmp_path / "python"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                       logging_steps=1, progress_bar=False, resume_from_checkpoint="latest")
    SFTTrainer(AutoModelForCausalLM.from_pretrained(path), config, train_dataset=rows).train()

    text = (tmp_path / "python" / "config.yaml").read_text()
    written = yaml.safe_load(text)
    assert written["model"] == path  # the object's name_or_path
    assert "# model: a LlamaForCausalLM object was passed from Python; recorded is where it was loaded from" in text
    assert written["train_data"] is None and "# train_data: 8 rows were passed from Python in memory" in text
    assert written["resume_from_checkpoint"] is None  # how the run started is not what it is
    data = _write_rows(tmp_path / "rows.jsonl", rows)
    assert main(["sft", "--config", str(tmp_path / "python" / "config.yaml"), f"train_data={data}", f"output_dir={tmp_path / 'cli'}"]) == 0
    assert _trained(tmp_path / "python") == _trained(tmp_path / "cli")
    assert _same_weights(_weights(tmp_path / "python"), _weights(tmp_path / "cli"))


def test_an_object_with_no_path_is_said_to_be_unrecordable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokenizer = build_tokenizer("chatml")
    model = build_causal_lm("llama", tokenizer)  # built in memory: no name_or_path
    SFTTrainer(model, tokenizer=tokenizer, train_dataset=ArithmeticTask(seed=0).prompt_completion("train", 4), max_steps=1,
               per_device_train_batch_size=4, progress_bar=False, save_final_model=False).train()
    [output_dir] = list((tmp_path / "outputs").iterdir())
    text = (output_dir / "config.yaml").read_text()
    assert "# model: a LlamaForCausalLM object without a name_or_path was passed from Python; this file cannot re-run the run" in text
    assert f"# output_dir: not set, so this run chose outputs/{output_dir.name}; null gives a re-run a new directory" in text
    written = yaml.safe_load(text)
    assert written["model"] is None and written["tokenizer"] is None and written["output_dir"] is None
    config = load_config(SFTConfig, output_dir / "config.yaml")  # the file still loads
    assert config.max_steps == 1 and config.output_dir is None


@pytest.mark.parametrize("value, written", [((1, 2), [1, 2]), ({"b", "a"}, ["a", "b"]), (Path("x/y"), "x/y"), (object(), None)])
def test_yaml_values(value, written):
    from posttrain.config import yaml_value

    assert yaml_value(value) == written
