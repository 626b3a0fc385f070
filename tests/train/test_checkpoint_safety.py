"""Must-show 2 (a kill during checkpoint rotation never leaves a checkpoint directory that fails
to load) and durable publishing: every file and directory of a checkpoint and of the final model
is flushed to disk (fsync) before the rename that publishes it."""

from __future__ import annotations

import filecmp
import os
import pathlib
import re
import shutil
from pathlib import Path

import pytest

from posttrain import SFTConfig, SFTTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.train import checkpoint
from posttrain.train.checkpoint import list_checkpoints, remove_stale_staging


class Killed(BaseException):
    """The process dying at this point (nothing after it runs)."""


def _sft(output_dir: Path, **overrides) -> SFTTrainer:
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-3, progress_bar=False, logging_steps=0)
    values.update(overrides)
    return SFTTrainer(str(checkpoint_model()), SFTConfig(**values), train_dataset=ArithmeticTask(seed=2).prompt_completion("train", 8))


def checkpoint_model():
    from posttrain.testing import fixture_path

    return fixture_path("llama")


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A run's output directory with complete checkpoints of steps 1 and 2 (no rotation)."""
    out = tmp_path_factory.mktemp("two-checkpoints")
    _sft(out, max_steps=3, save_steps=1, save_total_limit=0, save_final_model=False).train()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    return out


def _killing_rmtree(files_before_kill: int):
    """An ``rmtree`` that deletes this many files (trainer_state.json last, the worst order: the
    directory looks like a checkpoint until the end), then dies."""

    def rmtree(path, ignore_errors=False):
        path = Path(path)
        if not path.exists():
            return
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: (p.name == "trainer_state.json", p.name))
        for index, file in enumerate(files):
            if index == files_before_kill:
                raise Killed
            file.unlink()
        raise Killed  # before the emptied directory itself goes

    return rmtree


def _killing_rename(self, target):
    raise Killed


# -1: killed before the rename; k >= 0: killed after deleting k of the retired checkpoint's 5 files
@pytest.mark.parametrize("kill_point", [-1, 0, 1, 2, 3, 4, 5])
def test_kill_during_rotation_leaves_only_complete_checkpoints(two_checkpoints, tmp_path, monkeypatch, kill_point):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    if kill_point < 0:
        monkeypatch.setattr(pathlib.Path, "rename", _killing_rename)
    else:
        monkeypatch.setattr(shutil, "rmtree", _killing_rmtree(kill_point))
    with pytest.raises(Killed):
        checkpoint._rotate(out, keep=1)  # retires checkpoint-1
    monkeypatch.undo()
    named = [p for p in (out / "checkpoints").iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)]
    assert named == [p for p in named if p in list_checkpoints(out)]
    for directory in named:  # each is byte for byte the checkpoint that was written
        comparison = filecmp.dircmp(directory, two_checkpoints / "checkpoints" / directory.name)
        assert not (comparison.left_only or comparison.right_only), directory
        _, mismatch, errors = filecmp.cmpfiles(directory, comparison.right, comparison.common_files, shallow=False)
        assert not (mismatch or errors), directory
    assert "checkpoint-2" in [p.name for p in named]
    remove_stale_staging(out)  # what the next run does first
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(p.name for p in named)


def test_evaluating_before_training_leaves_the_trained_model_alone_in_checkpoints(tmp_path):
    trainer = _sft(tmp_path, max_steps=2, save_steps=1, save_final_model=False, eval_fraction=0.25)
    before = trainer.evaluate()
    trainer.train()
    # one model file: a resume that does not evaluate first registers one model, and loads it
    assert [p.name for p in (tmp_path / "checkpoints" / "checkpoint-1").glob("model*")] == ["model.safetensors"]
    assert trainer.evaluate()["eval/loss"] < before["eval/loss"]


def test_rotation_retires_old_checkpoints_without_leftovers(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    checkpoint._rotate(out, keep=1)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-2"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_checkpoint_and_final_model_are_flushed_before_they_are_published(tmp_path, monkeypatch):
    events = []
    fsync, rename = os.fsync, pathlib.Path.rename

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        return fsync(descriptor)

    def recording_rename(self, target):
        events.append(("rename", str(Path(self).resolve()), str(Path(target).resolve())))
        return rename(self, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(pathlib.Path, "rename", recording_rename)
    out = (tmp_path / "run").resolve()
    _sft(out, max_steps=2, save_steps=1, save_final_model=True).train()
    monkeypatch.undo()
    for published in (out / "checkpoints" / "checkpoint-1", out / "final"):
        (publish_at,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(published)]
        staging = events[publish_at][1]
        flushed = {e[1] for e in events[:publish_at] if e[0] == "fsync"}
        for path in [published, *published.rglob("*")]:
            assert staging + str(path)[len(str(published)) :] in flushed, path  # every file and directory
        assert ("fsync", str(published.parent)) in events[publish_at:]  # and the new name itself
