"""The output-directory guard: a second run into a directory holding a finished run is refused,
an unfinished one with checkpoints is resumed or overwritten as the refusal says, one that
stopped before its first checkpoint is simply run again, and the default output directory is new
for every run; and the pieces resuming relies on (metrics records past the checkpoint dropped,
the resume command, the CLI's exit status on Ctrl-C)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrain import SFTConfig, SFTTrainer, cli
from posttrain.tasks import ArithmeticTask
from posttrain.train.output_dir import Decision, decide, output_dir_problem
from posttrain.train.reporting import RunReporter, drop_records_after, resume_command


def _run(model_path, output_dir, callbacks=(), **overrides):
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3,
                  progress_bar=False, logging_steps=1)
    values.update(overrides)
    rows = ArithmeticTask(seed=3).prompt_completion("train", 16)
    return SFTTrainer(model_path("llama"), SFTConfig(**values), train_dataset=rows, callbacks=list(callbacks)).train()


def _steps(output_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_second_run_is_refused_and_overwrite_starts_afresh(model_path, tmp_path):
    _run(model_path, tmp_path, save_steps=1, max_steps=3)
    final = (tmp_path / "final" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError) as refused:
        _run(model_path, tmp_path)
    message = str(refused.value)
    assert str(tmp_path) in message and "finished run" in message
    assert "another output_dir" in message and "overwrite_output_dir=true" in message
    assert "resume_from_checkpoint" not in message  # a finished run has nothing to resume
    assert _steps(tmp_path) == [1, 2, 3] and (tmp_path / "final" / "model.safetensors").read_bytes() == final  # untouched

    _run(model_path, tmp_path, overwrite_output_dir=True)  # 2 steps, no checkpoints
    assert _steps(tmp_path) == [1, 2]  # a fresh metrics file
    assert not (tmp_path / "checkpoints").exists()  # no stale checkpoint for a later resume to pick up
    assert (tmp_path / "final" / "model.safetensors").read_bytes() != final


@pytest.mark.parametrize("resume", [None, "latest"])
def test_a_run_that_crashed_before_its_first_checkpoint_is_simply_run_again(model_path, tmp_path, kill_at, capsys, resume):
    with pytest.raises(RuntimeError, match="killed at step 2"):
        _run(model_path, tmp_path, callbacks=[kill_at(2)], max_steps=3, save_final_model=False)
    assert _steps(tmp_path) == [1, 2] and (tmp_path / "config.yaml").is_file()
    capsys.readouterr()
    state = _run(model_path, tmp_path, max_steps=3, resume_from_checkpoint=resume)  # the fixed script, run again
    assert state.step == 3 and _steps(tmp_path) == [1, 2, 3]  # the crashed run's records are gone
    notes = [line for line in capsys.readouterr().out.splitlines() if "stopped before its first checkpoint" in line]
    assert len(notes) == 1 and str(tmp_path) in notes[0]
    assert ("found no checkpoint" in notes[0]) == (resume == "latest")


def test_an_unfinished_run_with_checkpoints_is_resumed_or_overwritten_as_the_refusal_says(model_path, tmp_path, kill_at):
    def crash(directory):
        with pytest.raises(RuntimeError, match="killed at step 3"):
            _run(model_path, directory, callbacks=[kill_at(3)], max_steps=4, save_steps=2, save_final_model=False)

    crash(tmp_path / "a")
    with pytest.raises(FileExistsError) as refused:
        _run(model_path, tmp_path / "a", max_steps=4)
    message = str(refused.value)
    assert "unfinished run with checkpoints (newest: checkpoint-2)" in message
    assert "resume_from_checkpoint=latest" in message and "overwrite_output_dir=true" in message
    # the first suggestion: continue from checkpoint-2 (step 3's record, made after it, is redone)
    assert _run(model_path, tmp_path / "a", max_steps=4, resume_from_checkpoint="latest").step == 4
    assert _steps(tmp_path / "a") == [1, 2, 3, 4]
    # the second: start afresh
    crash(tmp_path / "b")
    assert _run(model_path, tmp_path / "b", max_steps=4, overwrite_output_dir=True).step == 4
    assert _steps(tmp_path / "b") == [1, 2, 3, 4] and not (tmp_path / "b" / "checkpoints").exists()


def test_the_default_output_dir_is_new_for_every_run_and_printed(model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = ArithmeticTask(seed=3).prompt_completion("train", 8)
    quiet = dict(per_device_train_batch_size=4, max_steps=1, progress_bar=False, logging_steps=0, save_final_model=False)
    first = SFTTrainer(model_path("llama"), SFTConfig(**quiet), train_dataset=rows)
    second = SFTTrainer(model_path("llama"), SFTConfig(**quiet), train_dataset=rows)  # made in the same second, most likely
    first.train()
    second.train()
    directories = [Path(trainer.config.output_dir) for trainer in (first, second)]
    assert directories[0] != directories[1]
    for directory in directories:
        assert directory.parent == Path("outputs") and directory.name.startswith("sft-")
        assert (directory / "trainer_state.json").is_file()  # each finished in its own directory
    printed = capsys.readouterr().out
    assert all(f"output_dir: {directory} (a new directory per run" in printed for directory in directories)


def _holding(directory: Path, *names: str) -> Path:
    directory.mkdir()
    for name in names:
        (directory / name).mkdir() if "." not in name else (directory / name).write_text("")
    return directory


def test_guard_decisions(tmp_path):
    empty = _holding(tmp_path / "empty", "notes.txt")  # the user's own files are not a run
    assert decide(empty, None, False, False) == Decision()
    assert "no checkpoint" in decide(empty, None, True, False).note  # "latest" with nothing there: said, then run
    crashed = _holding(tmp_path / "crashed", "config.yaml", "metrics.jsonl")
    reuse = decide(crashed, None, False, False)
    assert reuse.problem is None and reuse.clear == ["config.yaml", "metrics.jsonl"] and "starting afresh" in reuse.note
    killed = _holding(tmp_path / "killed", "config.yaml", "metrics.jsonl", "checkpoints")
    (killed / "checkpoints" / "checkpoint-4").mkdir()
    (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert "unfinished run with checkpoints" in output_dir_problem(killed, None, False, False)
    assert output_dir_problem(killed, killed / "checkpoints" / "checkpoint-4", True, False) is None
    elsewhere = tmp_path / "other" / "checkpoints" / "checkpoint-4"  # another run's checkpoint
    assert output_dir_problem(killed, elsewhere, True, False) is not None
    assert decide(killed, None, False, True).clear == ["config.yaml", "metrics.jsonl", "checkpoints"]
    finished = _holding(tmp_path / "finished", "config.yaml", "metrics.jsonl", "trainer_state.json")
    assert "nothing to resume" in output_dir_problem(finished, None, True, False)
    assert "a finished run" in output_dir_problem(_holding(tmp_path / "saved", "config.yaml", "final"), None, False, False)
    assert "set only one" in output_dir_problem(finished, None, True, True)


def test_drop_records_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval/loss": 1.7}, {"step": 3, "loss": 1.2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')  # torn by a kill
    assert drop_records_after(path, 2) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    assert drop_records_after(path, 2) == 0 and drop_records_after(tmp_path / "absent.jsonl", 0) == 0


def test_reporter_rewinds_metrics_and_other_logs(tmp_path):
    reporter = RunReporter(SimpleNamespace(is_main_process=True), tmp_path, progress_bar=False)
    for name in ("metrics.jsonl", "completions.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 2, 3)))
    reporter.rewind(1, tmp_path / "completions.jsonl")
    for name in ("metrics.jsonl", "completions.jsonl"):
        assert (tmp_path / name).read_text() == '{"step": 1}\n'


def test_resume_command():
    assert resume_command(["/venv/bin/posttrain", "dpo", "--config", "my run.yaml", "beta=0.2"]) == (
        "posttrain dpo --config 'my run.yaml' beta=0.2 resume_from_checkpoint=latest"
    )
    argv = ["/x/posttrain/__main__.py", "sft", "resume_from_checkpoint=/old/path", "lr=1"]
    assert resume_command(argv) == "posttrain sft lr=1 resume_from_checkpoint=latest"  # the old value goes
    assert resume_command(["train.py", "--fast"]).startswith('python train.py --fast, with resume_from_checkpoint="latest"')


def test_cli_exits_130_on_ctrl_c(monkeypatch, tmp_path):
    class Interrupted:
        def __init__(self, config):
            pass

        def train(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_trainer_classes", lambda command: (Interrupted, SFTConfig))
    assert cli.main(["sft", f"output_dir={tmp_path}"]) == 130

