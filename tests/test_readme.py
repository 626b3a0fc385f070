"""Every Python example in the README runs, in order, with the hub model names swapped for an
offline fixture and small local data files where the README names them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from posttrain.tasks import ArithmeticTask

README = Path(__file__).parents[1] / "README.md"
HUB_NAMES = ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B-Instruct")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _write_data(directory: Path) -> None:
    task = ArithmeticTask(seed=0)
    directory.mkdir()
    files = {
        "sft.jsonl": task.prompt_completion("train", 32),
        "sft_eval.jsonl": task.prompt_completion("test", 8),
        "pairs.jsonl": task.preference_pairs("train", 32),
    }
    for name, rows in files.items():
        (directory / name).write_text("\n".join(json.dumps(row) for row in rows))


def test_readme_python_examples_run(model_path, tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    _write_data(tmp_path / "data")
    model = model_path("llama")
    for number, block in enumerate(blocks):
        for name in HUB_NAMES:
            block = block.replace(name, model)
        # the examples train for an epoch of their data; keep every run to a couple of steps
        block = block.replace("num_epochs=1", "max_steps=2")
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), {"__name__": "__readme__"})
        except Exception as error:  # name the failing example
            raise AssertionError(f"README python block {number} failed: {block.splitlines()[0]!r}") from error
    assert (tmp_path / "outputs" / "sft" / "final").is_dir()


def test_coming_from_trl_lists_every_translated_and_refused_name():
    from posttrain.trl_names import known_names

    text = README.read_text()
    section = text[text.index("## Coming from TRL") : text.index("## Command line")]
    missing = [name for name in known_names() if f"`{name}" not in section]
    assert not missing, f"README's 'Coming from TRL' does not list {missing}"
