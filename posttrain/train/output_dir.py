"""The output-directory guard: one directory holds one run.

A new run into a directory that already holds a run would replace its final model and
``config.yaml`` and append to its ``metrics.jsonl``, mixing two runs in one file. It is refused
unless the run is resumed (``resume_from_checkpoint``) or the old one is deleted on purpose
(``overwrite_output_dir``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from posttrain.train.checkpoint import checkpoints_dir

# What a run writes into its output directory; overwriting deletes exactly these, never the
# directory itself (it may be "." or hold the user's own files).
RUN_FILES = ("config.yaml", "metrics.jsonl", "completions.jsonl", "checkpoints", "final", "logs")


def previous_run(output_dir: str | Path) -> list[str]:
    """Names of the files and directories of an earlier run found in ``output_dir``."""
    out = Path(output_dir)
    return [name for name in RUN_FILES if (out / name).exists()]


def output_dir_problem(output_dir: str | Path, resume_path: Path | None, resume_requested: bool, overwrite: bool) -> str | None:
    """Why a run may not start in ``output_dir`` (None: it may).

    ``resume_path``: the checkpoint being resumed (None: none); ``resume_requested``: whether
    resuming was asked for at all (``"latest"`` finds no checkpoint in a run killed before its
    first one: that run is restarted, unless it had finished)."""
    if overwrite and resume_requested:
        return (
            "overwrite_output_dir=true deletes the run that resume_from_checkpoint would continue; "
            "set only one of them"
        )
    found = previous_run(output_dir)
    if overwrite or not found:
        return None
    if resume_path is not None and Path(resume_path).resolve().parent == checkpoints_dir(output_dir).resolve():
        return None
    if resume_requested and resume_path is None and "final" not in found:
        return None
    what = "a finished run" if "final" in found else "an earlier run"
    return (
        f"output_dir {str(output_dir)!r} already holds {what} ({', '.join(found)}); starting another run there would "
        "replace its final model and mix both runs' metrics. Choose one: another output_dir; "
        "resume_from_checkpoint=latest to continue that run from its newest checkpoint; or overwrite_output_dir=true "
        f"to delete {', '.join(found)} and start afresh."
    )


def clear_previous_run(output_dir: str | Path) -> list[str]:
    """Delete an earlier run's files from ``output_dir`` (see :data:`RUN_FILES`); returns their names."""
    out, removed = Path(output_dir), previous_run(output_dir)
    for name in removed:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
