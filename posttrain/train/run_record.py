"""What a run records about itself so it can be found and run again: its default output
directory (a new one per run) and ``config.yaml``.

``config.yaml`` holds every option of the run, written so that ``--config config.yaml`` reads
back the same values (lists and mappings as YAML, not as their Python text). A run started from
Python may have been given objects instead of options -- a model, a tokenizer, rows in memory,
reward functions; the file then records where each came from when that is known (a model's
``name_or_path``) and says plainly in a comment when the file alone cannot re-run the run.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from posttrain.config import config_to_dict, yaml_value

# Options that say how a run was started rather than what it is: a re-run from the file starts
# afresh wherever it is pointed.
_START_OPTIONS = {"resume_from_checkpoint": None, "overwrite_output_dir": False}


def algorithm_name(trainer) -> str:
    """``SFTTrainer`` -> ``sft``, ``RewardTrainer`` -> ``reward``."""
    return type(trainer).__name__.removesuffix("Trainer").lower() or "run"


def default_output_dir(algorithm: str, now: datetime | None = None) -> str:
    """``outputs/<algorithm>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when a run of the same
    second already took it. The main process (``RANK`` 0) creates the directory at once, so two
    trainers made in the same second cannot both choose it; the other processes take the main
    process's choice (see ``Trainer._agree_on_output_dir``)."""
    base = Path("outputs") / f"{algorithm}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
    reserve = int(os.environ.get("RANK", "0")) == 0
    candidate, number = base, 2
    while True:
        try:
            if reserve:
                candidate.mkdir(parents=True)
            elif candidate.exists():
                raise FileExistsError(candidate)
            return str(candidate)
        except FileExistsError:
            candidate, number = base.with_name(f"{base.name}-{number}"), number + 1


def describe_sources(model, tokenizer, train_dataset, eval_dataset) -> dict[str, tuple[Any, str | None]]:
    """For each of ``model``, ``tokenizer``, ``train_data`` and ``eval_data`` given to a
    trainer from Python: ``(value to record, comment or None)``. Computed when the trainer is
    made, so no reference to the objects is kept."""
    sources = {}
    if model is not None:
        sources["model"] = _describe_object(model, "model", "the weights saved there, not the object's weights in memory")
    if tokenizer is not None:
        sources["tokenizer"] = _describe_object(tokenizer, "tokenizer", "the tokenizer saved there, not changes made to the object")
    for option, rows in (("train_data", train_dataset), ("eval_data", eval_dataset)):
        if rows is None:
            continue
        if isinstance(rows, (str, os.PathLike)):
            sources[option] = (os.fspath(rows), None)
        else:
            count = f"{len(rows)} rows" if hasattr(rows, "__len__") else "rows"
            sources[option] = (None, f"{option}: {count} were passed from Python in memory; set {option} to a file (.jsonl, .parquet, ...) to re-run from this file")
    return sources


def _describe_object(source, option: str, what_reloads: str) -> tuple[Any, str | None]:
    from posttrain.models.loading import tokenizer_source

    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source), None
    name = tokenizer_source(source)
    kind = type(source).__name__
    if name:
        return name, f"{option}: a {kind} object was passed from Python; recorded is where it was loaded from, and a re-run loads {what_reloads}"
    return None, f"{option}: a {kind} object without a name_or_path was passed from Python; this file cannot re-run the run until {option} is set to a path"


def reward_function_note(trainer) -> str | None:
    """A comment for reward functions given as Python callables (they have no YAML form)."""
    rewards = getattr(trainer, "rewards", None)
    if rewards is None or getattr(trainer.config, "reward_funcs", None):
        return None
    names = getattr(rewards, "names", None) or []
    listed = f" ({', '.join(map(str, names))})" if names else ""
    return (
        f"reward_funcs: Python functions were passed{listed}; list them here as built-in names or 'module:function' "
        "paths to re-run from this file"
    )


def run_config_yaml(trainer, *, output_dir_defaulted: bool, sources: dict[str, tuple[Any, str | None]]) -> str:
    """The text of ``config.yaml`` for ``trainer``'s run."""
    config = trainer.config
    values, notes = {}, []
    for key, value in config_to_dict(config).items():
        if key in _START_OPTIONS:
            value = _START_OPTIONS[key]
        written = yaml_value(value)
        if written is None and value is not None:
            notes.append(f"{key}: a {type(value).__name__} has no YAML form; set {key} by hand to re-run from this file")
        values[key] = written
    for key, (value, note) in sources.items():
        if value is not None or values.get(key) is None:
            values[key] = value
        if note is not None:
            notes.append(note)
    if output_dir_defaulted:
        values["output_dir"] = None
        notes.append(f"output_dir: not set, so this run chose {config.output_dir}; null gives a re-run a new directory of its own")
    reward_note = reward_function_note(trainer)
    if reward_note:
        notes.append(reward_note)
    header = [
        f"# The options of a posttrain {type(trainer).__name__} run, resolved: `--config` with this file (or",
        f"# load_config({type(config).__name__}, path)) reads back the same values. resume_from_checkpoint and",
        "# overwrite_output_dir are not recorded: they say how the run started, not what it is.",
    ]
    header += [f"# {note}" for note in notes]
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
