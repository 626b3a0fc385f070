"""The example configs in recipes/ are valid and their settings work together: each runs one
step through the CLI with the model and data swapped for offline fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from posttrain.cli import main
from posttrain.tasks import ArithmeticTask

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def _rows(command: str) -> list[dict]:
    task = ArithmeticTask(seed=0)
    if command == "grpo":  # GSM8K's columns: a question and a worked answer ending in '#### <number>'
        return [{"question": row["prompt"], "answer": f"add them\n#### {row['answer']}"} for row in task.prompt_only("train", 8)]
    if command == "ppo":  # one rollout batch of the recipe
        return task.prompt_only("train", 64, conversational=True)
    if command == "sft":
        return task.conversations("train", 8, turns=2)
    if command == "kto":
        return task.unpaired("train", 8, conversational=True)
    pairs = task.preference_pairs("train", 8, conversational=True)
    # implicit prompt, as in the hub dataset the recipe names: full conversations on both sides
    return [{"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]} for row in pairs]


def test_there_is_a_recipe_per_algorithm():
    assert {path.name.split("-")[0] for path in RECIPES} == {"sft", "rm", "dpo", "kto", "grpo", "ppo"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_runs_one_step_on_fixtures(recipe, model_path, tmp_path):
    command = recipe.name.split("-")[0]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in _rows(command)))
    model = model_path("classifier-llama" if command == "rm" else "llama")
    length = ["max_completion_length=8", "num_generations=2", "per_device_train_batch_size=2", "gradient_accumulation_steps=1"] if command == "grpo" else ["max_length=128"]
    overrides = [f"model={model}", f"train_data={data}", f"eval_data={data}", f"output_dir={tmp_path / 'run'}",
                 "max_steps=1", "progress_bar=false", "report_to=[]", "save_steps=0"]
    if command == "ppo":  # the reward model (and critic) of the recipe: the classifier fixture
        classifier = model_path("classifier-llama")
        overrides += ["max_completion_length=16", f"reward_funcs=[{classifier}]", f"value_model={classifier}"]
    else:
        overrides += length
    assert yaml.safe_load(recipe.read_text())["model"]  # the recipe names a real model
    assert main([command, "--config", str(recipe), *overrides]) == 0
    assert (tmp_path / "run" / "final").is_dir()
