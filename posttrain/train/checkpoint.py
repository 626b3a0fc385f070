"""Checkpoints written atomically: a checkpoint directory either exists complete or not at all.

Layout: ``<output_dir>/checkpoints/checkpoint-<step>/`` holding accelerate's state (model,
optimizer, every registered object such as the LR scheduler, and each process's RNG states)
plus ``trainer_state.json`` (step, epoch, position in the epoch). Everything is first written
to a ``.tmp-`` directory, flushed to disk (fsync) and renamed into place, so a run killed
mid-save -- or a machine that loses power -- leaves the previous checkpoint intact and no
half-written one that resume could pick up. Retiring a checkpoint renames it to a ``.tmp-`` name
before deleting it, for the same reason: a directory named ``checkpoint-<step>`` is always
complete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from posttrain.errors import CheckpointNotFoundError
from posttrain.train.state import STATE_FILE, TrainState

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resume_requested(resume_from) -> bool:
    """Whether the ``resume_from_checkpoint`` value asks for a resume at all."""
    return resume_from not in (None, False, "", "none")


def resolve_resume_path(resume_from, output_dir) -> Path | None:
    """``None``/``False`` -> no resume; ``"latest"``/``True`` -> newest checkpoint in
    ``output_dir`` (None if there is none yet); anything else is a checkpoint path."""
    if not resume_requested(resume_from):
        return None
    if resume_from in (True, "latest", "true"):
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise CheckpointNotFoundError(
            f"resume_from_checkpoint={resume_from!r} is not a checkpoint (no {STATE_FILE}); give a checkpoints/checkpoint-<step> "
            "directory of an earlier run, or latest"
        )
    return path


def save_checkpoint(accelerator, output_dir: str | Path, state: TrainState, keep: int) -> Path:
    """Write a checkpoint for ``state.step`` atomically and delete all but the newest ``keep``."""
    root = checkpoints_dir(output_dir)
    final = root / f"checkpoint-{state.step}"
    staging = root / f"{_TMP_PREFIX}checkpoint-{state.step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(staging)
        if final.exists():  # a re-run of the same step: replace it, never merge
            retire(final)
        publish(staging, final)
        _rotate(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def remove_stale_staging(output_dir: str | Path) -> None:
    """Delete half-written checkpoints left by a run that was killed while saving."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def _rotate(output_dir, keep: int) -> None:
    if keep <= 0:
        return
    for path in list_checkpoints(output_dir)[:-keep]:
        retire(path)


def retire(directory: Path) -> None:
    """Delete ``directory`` so that a kill at any moment leaves it either complete under its name
    or gone from it: renamed to a ``.tmp-retired-`` name first (atomic), then deleted. A leftover
    is removed by :func:`remove_stale_staging` or the next retirement."""
    trash = directory.with_name(f"{_TMP_PREFIX}retired-{directory.name}")
    shutil.rmtree(trash, ignore_errors=True)
    directory.rename(trash)
    fsync_directory(directory.parent)
    shutil.rmtree(trash, ignore_errors=True)


def publish(staging: Path, final: Path) -> None:
    """Rename the complete directory ``staging`` to ``final`` (which must not exist), durably:
    every file and directory is flushed to disk before the rename, the parent after it, so after
    a power loss ``final`` either does not exist or holds every byte."""
    fsync_tree(staging)
    staging.rename(final)
    fsync_directory(final.parent)


def fsync_tree(directory: Path) -> None:
    """Flush every file below ``directory`` and every directory in it to disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_directory(Path(root))


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (new names, renames) to disk. Windows cannot open a
    directory for this; NTFS journals its metadata instead."""
    if os.name == "nt":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_pretrained_atomic(model, tokenizer, directory: str | Path, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` of model and tokenizer into ``directory``, via a staging directory.

    ``state_dict`` (keys as in ``model.state_dict()``) replaces the model's own tensors, e.g.
    full weights gathered from FSDP shards; None saves the model as it is in memory.

    A previous save is moved aside (not deleted) before the rename, so at every instant either
    the old or the new complete model sits at ``directory`` or beside it under a ``.tmp-`` name.
    """
    from transformers.utils import logging as hf_logging

    directory = Path(directory)
    staging = directory.with_name(_TMP_PREFIX + directory.name)
    previous = directory.with_name(_TMP_PREFIX + "old-" + directory.name)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(previous, ignore_errors=True)
    bars_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars would break the Rich console
    try:
        model.save_pretrained(staging, **({} if state_dict is None else {"state_dict": state_dict}))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    finally:
        if bars_enabled:
            hf_logging.enable_progress_bar()
    if directory.exists():
        directory.rename(previous)
    publish(staging, directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory
