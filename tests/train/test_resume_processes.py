"""Must-show: a run that dies and is resumed in a NEW process ends exactly where an uninterrupted
run ends, for every trainer (SFT, RM, DPO, KTO, GRPO, PPO) and every reference mode (a frozen copy,
LoRA adapters disabled, precomputed log-probs), with one metrics record per step; and
Ctrl-C writes a checkpoint after the current optimizer step (twice: stops at once).

All runs happen in child processes of tests/train/resume_worker.py (one process per run, SIGKILL
as the kill, real SIGINTs sent from here). The precomputed-reference cases failed before the
reference copy stopped being registered with accelerate: the killed process saved the copy as
the checkpoint's first model and the resuming one, which read the reference log-probs from the
cache, loaded it into the policy (first loss after the resume ln 2 for DPO, 0.5 for KTO)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resume_worker import CASES, KILL_STEP, SAVE_STEPS, SIGINT, SIGINT2, STEPS

WORKER = Path(__file__).with_name("resume_worker.py")


def _results(record: dict) -> dict:
    """A metrics record without its wall-clock measurements (time, time/generation, tokens_per_second, ...)."""
    return {k: v for k, v in record.items() if not (k.startswith("time") or k.endswith("tokens_per_second"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_path):
    """Runs every case; returns the root directory, ``{name: (exit code, exception, time, pid)}``
    and ``{pid: time the last SIGINT was sent}``."""
    model_path("llama"), model_path("classifier-llama")  # built here, in the cache the workers inherit
    root = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(WORKER), str(root), *CASES]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, process.kill)
    watchdog.start()
    output, exits, sent = [], {}, {}
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith("WAITING "):
                pid = int(line.split()[1])
                os.kill(pid, signal.SIGINT)
                sent[pid] = time.monotonic()
            elif line.startswith("EXIT "):
                _, name, pid, code, error = line.split()
                exits[name] = (int(code), error, time.monotonic(), int(pid))
    finally:
        watchdog.cancel()
    assert process.wait() == 0, "".join(output)[-6000:]
    return root, exits, sent


def _exit(runs, name: str) -> tuple:
    root, exits, _ = runs
    log = root / f"{name}.log"
    assert name in exits, log.read_text()[-6000:] if log.exists() else f"no {log}"
    return exits[name]


def _log(runs, name: str) -> str:
    return (runs[0] / f"{name}.log").read_text()


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    (weights,) = (run / "final").glob("*.safetensors")  # model or LoRA adapter
    return load_file(weights)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(runs, case: str) -> None:
    full, cut = runs[0] / case / "full", runs[0] / case / "cut"
    expected, actual = _final_weights(full), _final_weights(cut)
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, (
        f"{case}: {len(different)} tensors differ, e.g. {different[0]}: max {(actual[different[0]] - expected[different[0]]).abs().max():.3g}"
    )
    resumed, uninterrupted = _metrics(cut), _metrics(full)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # each step once
    for ours, theirs in zip(resumed, uninterrupted, strict=True):
        assert _results(ours) == _results(theirs)


@pytest.mark.parametrize("case", CASES)
def test_killed_run_resumed_in_a_new_process_matches_uninterrupted_run(runs, case):
    assert _exit(runs, case)[0] == -signal.SIGKILL, _log(runs, case)[-6000:]  # it really died after step KILL_STEP
    assert _exit(runs, "resume")[0] == 0, _log(runs, "resume")[-6000:]
    _assert_same_run(runs, case)
    saved = runs[0] / case / "cut" / "checkpoints" / f"checkpoint-{SAVE_STEPS}"
    assert [p.name for p in saved.glob("model*")] == ["model.safetensors"]  # the trained model alone
    # the run moved away from its starting weights (LoRA adapters start with B = 0)
    assert any(tensor.abs().max() > 0 for tensor in _final_weights(runs[0] / case / "full").values())


def test_sigint_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(runs):
    code, error, _, _ = _exit(runs, SIGINT)
    log = " ".join(_log(runs, SIGINT).split())  # the console wraps long lines
    assert (code, error) == (1, "TrainingInterrupted"), log[-6000:]
    assert f"stopped after step {KILL_STEP} of {STEPS}" in log
    assert "resume_from_checkpoint" in log  # the resume command
    checkpoint = runs[0] / SIGINT / "cut" / "checkpoints" / f"checkpoint-{KILL_STEP}"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == KILL_STEP
    _assert_same_run(runs, SIGINT)


def test_second_sigint_stops_at_once_without_a_checkpoint(runs):
    code, error, ended, pid = _exit(runs, SIGINT2)
    assert (code, error) == (1, "KeyboardInterrupt"), _log(runs, SIGINT2)[-6000:]
    assert ended - runs[2][pid] < 30  # the run was asleep for 60 s inside the step
    checkpoints = sorted(p.name for p in (runs[0] / SIGINT2 / "cut" / "checkpoints").iterdir())
    assert checkpoints == [f"checkpoint-{SAVE_STEPS}"]
