"""The output-directory guard: one directory holds one run.

A new run into a directory that already holds a run would replace its final model and
``config.yaml`` and append to its ``metrics.jsonl``, mixing two runs in one file. What happens
depends on what is there (:func:`decide`):

- nothing of a run: start;
- a finished run (``trainer_state.json`` or ``final/`` written at its end): refused; choose
  another ``output_dir`` or delete it on purpose with ``overwrite_output_dir``;
- an unfinished run with checkpoints: refused unless resumed (``resume_from_checkpoint``) or
  overwritten;
- an unfinished run without a checkpoint (it crashed or was stopped before its first one):
  nothing of it can be continued, so its files are deleted and the run starts in its place,
  with a one-line note. Fixing a script that crashed at step 1 and running it again just works.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.train.checkpoint import checkpoints_dir, latest_checkpoint
from posttrain.train.state import STATE_FILE

# What a run writes into its output directory; overwriting deletes exactly these, never the
# directory itself (it may be "." or hold the user's own files). trainer_state.json is written
# at the end of a run: it marks the run finished.
RUN_FILES = ("config.yaml", "metrics.jsonl", "completions.jsonl", "checkpoints", "final", "logs", STATE_FILE, "report.md", "plots")


@dataclass
class Decision:
    """What to do with ``output_dir``: refuse (``problem``), or delete ``clear`` (an earlier
    run's files) and start, telling the user ``note``."""

    problem: str | None = None
    clear: list[str] = field(default_factory=list)
    note: str | None = None
    resumable: bool = False  # the problem goes away with resume_from_checkpoint (TRL passes it to train())


def previous_run(output_dir: str | Path) -> list[str]:
    """Names of the files and directories of an earlier run found in ``output_dir``."""
    out = Path(output_dir)
    return [name for name in RUN_FILES if (out / name).exists()]


def is_finished(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds a run that reached its end."""
    out = Path(output_dir)
    return (out / STATE_FILE).is_file() or (out / "final").exists()


def decide(output_dir: str | Path, resume_path: Path | None, resume_requested: bool, overwrite: bool) -> Decision:
    """What a run starting in ``output_dir`` does (see the module docstring).

    ``resume_path``: the checkpoint being resumed (None: none); ``resume_requested``: whether
    resuming was asked for at all (``"latest"`` finds no checkpoint in a run stopped before its
    first one: that run is started afresh)."""
    where = repr(str(output_dir))
    if overwrite and resume_requested:
        return Decision("overwrite_output_dir=true deletes the run that resume_from_checkpoint would continue; set only one of them")
    found = previous_run(output_dir)
    if not found:
        note = f"resume_from_checkpoint: no checkpoint in {where}; starting from step 0" if resume_requested and resume_path is None else None
        return Decision(note=note)
    if overwrite:
        return Decision(clear=found, note=f"overwrite_output_dir: deleting the earlier run's {', '.join(found)} in {where}")
    if is_finished(output_dir):
        nothing = "; there is nothing to resume (resume_from_checkpoint continues an unfinished run)" if resume_requested else ""
        return Decision(
            f"output_dir {where} already holds a finished run ({', '.join(found)}){nothing}; starting another run there "
            "would replace its final model and mix both runs' metrics. Choose another output_dir (leave it unset for a "
            f"new one per run), or overwrite_output_dir=true to delete {', '.join(found)} and start afresh"
        )
    newest = latest_checkpoint(output_dir)
    if resume_path is not None and Path(resume_path).resolve().parent == checkpoints_dir(output_dir).resolve():
        return Decision()
    if newest is not None:
        return Decision(
            f"output_dir {where} holds an unfinished run with checkpoints (newest: {newest.name}). resume_from_checkpoint=latest "
            f"continues it; overwrite_output_dir=true deletes it ({', '.join(found)}) and starts afresh; or choose another output_dir",
            resumable=True,
        )
    asked = "resume_from_checkpoint found no checkpoint: " if resume_requested and resume_path is None else ""
    return Decision(
        clear=found,
        note=f"{asked}output_dir {where} holds a run that stopped before its first checkpoint ({', '.join(found)}); starting afresh in its place",
    )


def check_output_dir(config) -> None:
    """Refuse a config whose output_dir holds a run it must not start in (the command line
    calls it before loading anything)."""
    from posttrain.errors import OutputDirError
    from posttrain.train.checkpoint import resolve_resume_path, resume_requested

    if config.output_dir is None:
        return
    path = resolve_resume_path(config.resume_from_checkpoint, config.output_dir)
    problem = output_dir_problem(config.output_dir, path, resume_requested(config.resume_from_checkpoint), config.overwrite_output_dir)
    if problem is not None:
        raise OutputDirError(problem)


def output_dir_problem(output_dir: str | Path, resume_path: Path | None, resume_requested: bool, overwrite: bool) -> str | None:
    """Why a run may not start in ``output_dir`` (None: it may)."""
    return decide(output_dir, resume_path, resume_requested, overwrite).problem


def clear_previous_run(output_dir: str | Path, names: list[str] | None = None) -> list[str]:
    """Delete an earlier run's files from ``output_dir`` (``names``, default all of
    :data:`RUN_FILES` found); returns their names."""
    out = Path(output_dir)
    removed = previous_run(output_dir) if names is None else [name for name in names if (out / name).exists()]
    for name in removed:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
