"""The completion log of every trainer: the panel and completions.jsonl at exactly the interval,
sample prompts for the offline trainers, and text shortened visibly in the middle."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.algorithms.sft import SFTConfig, SFTTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.train.completions import shorten_middle
from posttrain.train.samples import sample_prompts

TASK = ArithmeticTask(seed=4)


def test_shorten_middle_marks_what_it_removed():
    text = "a" * 50 + "b" * 50
    short = shorten_middle(text, 30)
    assert short.startswith("a" * 20) and short.endswith("b" * 10)
    assert "[... 70 chars ...]" in short
    assert shorten_middle("short", 30) == "short"


def test_sample_prompts_from_every_format():
    rows = [
        {"text": "no prompt here"},
        {"prompt": "What is 1+1?", "completion": " 2"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5"},
        {"prompt": [{"role": "user", "content": "3+3?"}], "completion": [{"role": "assistant", "content": "6"}]},
    ]
    found = sample_prompts(rows, 10)
    assert found == [
        {"prompt": "What is 1+1?", "expected": " 2"},
        {"prompt": [{"role": "user", "content": "hi"}], "expected": "hello"},
        {"prompt": "What is 2+2?", "expected": " 4"},
        {"prompt": [{"role": "user", "content": "3+3?"}], "expected": "6"},
    ]
    assert len(sample_prompts(rows, 2)) == 2


def _common(tmp_path, **values):
    return dict(output_dir=str(tmp_path), max_steps=5, log_completions_steps=2, num_completions_to_print=3, progress_bar=False,
                logging_steps=0, per_device_train_batch_size=4, learning_rate=1e-3, mixed_precision="no", **values)


@pytest.mark.parametrize("algorithm", ["sft", "dpo", "kto"])
def test_offline_trainers_log_sample_completions_at_the_interval(model_path, tmp_path, algorithm):
    if algorithm == "sft":
        trainer = SFTTrainer(model_path("llama"), SFTConfig(**_common(tmp_path)), train_dataset=TASK.prompt_completion("train", 16))
        source = TASK.prompt_completion("train", 3)
    elif algorithm == "dpo":
        eval_rows = TASK.preference_pairs("test", 4)
        trainer = DPOTrainer(model_path("llama"), DPOConfig(**_common(tmp_path)), train_dataset=TASK.preference_pairs("train", 16), eval_dataset=eval_rows)
        source = eval_rows[:3]  # evaluation prompts when there are some
    else:
        trainer = KTOTrainer(model_path("llama"), KTOConfig(**_common(tmp_path)), train_dataset=TASK.unpaired("train", 16))
        source = TASK.unpaired("train", 3)
    buffer = io.StringIO()
    trainer.completion_log.console = Console(file=buffer, width=160)
    trainer.train()
    assert [line for line in buffer.getvalue().splitlines() if "completions at step" in line].__len__() == 2
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 2, 2, 4, 4, 4]
    assert [r["prompt"] for r in rows[:3]] == [row["prompt"] for row in source]
    assert {"completion", "expected", "tokens", "stopped"} <= set(rows[0])
