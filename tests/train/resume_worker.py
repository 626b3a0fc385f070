"""Runs that are killed, interrupted and resumed, each in a process of its own; driven by
tests/train/test_resume_processes.py. Not a test module itself (no ``test_`` prefix).

    python resume_worker.py ROOT CASE...

Importing torch and transformers (much of it lazily, on a first model load) takes most of a
process's start-up, so this script imports them once and forks a child process for each run
below. No trainer, accelerator or model exists in the parent: a child shares nothing with the
run it resumes but the files on disk.

1. For every CASE at once (``<algorithm>`` or ``<algorithm>-<reference mode>``): a child trains
   the uninterrupted run into ROOT/CASE/full, then the same run into ROOT/CASE/cut, and SIGKILLs
   itself once step KILL_STEP is done (the newest checkpoint is step SAVE_STEPS, one behind).
   Two more children, SIGINT and SIGINT2 (SFT), stop in the middle of step KILL_STEP and print
   ``WAITING <pid>`` until the test sends them one SIGINT, or two.
2. Then one new child resumes every ROOT/CASE/cut and ROOT/SIGINT/cut with "latest".

A child's output goes to ROOT/<name>.log; the script's own output is one line per event:
``WAITING <pid>`` and ``EXIT <name> <pid> <exit code> <exception name>``. The killed run
computes its reference log-probs (cache ROOT/CASE/cache-cut is empty), while the resuming one
reads them from that cache, as when a user resumes a real run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from posttrain import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    KTOConfig,
    KTOTrainer,
    PPOConfig,
    PPOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
)
from posttrain.tasks import ArithmeticTask
from posttrain.testing import fixture_path

CASES = (
    "sft", "rm", "dpo-model", "dpo-adapters_disabled", "dpo-precomputed", "kto-model", "kto-adapters_disabled", "kto-precomputed",
    "grpo-model", "ppo-model",
)
SIGINT, SIGINT2 = "sigint", "sigint2"
STEPS, SAVE_STEPS, KILL_STEP = 4, 2, 3


def trainer(case: str, output_dir: Path, cache: Path, **extra):
    """A trainer for ``case``: 8 rows, 2 x 2 per step, so 2 steps per epoch and 4 steps in all
    (the kill and the resume cross an epoch boundary; GRPO: 2 prompts x 4 completions per step)."""
    algorithm, _, mode = case.partition("-")
    task = ArithmeticTask(seed=5)
    common = dict(
        output_dir=str(output_dir), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=STEPS,
        save_steps=SAVE_STEPS, learning_rate=1e-3, lr_scheduler="cosine", logging_steps=1, progress_bar=False, seed=11,
    )
    common.update(extra)
    if algorithm in ("sft", SIGINT, SIGINT2):
        return SFTTrainer(str(fixture_path("llama")), SFTConfig(**common), train_dataset=task.prompt_completion("train", 8))
    if algorithm == "rm":
        return RewardTrainer(str(fixture_path("classifier-llama")), RewardConfig(**common), train_dataset=task.preference_pairs("train", 8))
    reference = dict(reference_mode=mode, ref_logps_cache_dir=str(cache), beta=0.5)
    if mode == "adapters_disabled":
        reference.update(use_lora=True, lora_r=4)
    if algorithm == "dpo":
        return DPOTrainer(str(fixture_path("llama")), DPOConfig(**common, **reference), train_dataset=task.preference_pairs("train", 8))
    if algorithm == "grpo":
        # sampled from the model at temperature 1.5: the resumed process must restore the sampling RNG
        online = dict(reference_mode=mode, beta=0.1, num_generations=4, max_completion_length=6, temperature=1.5)
        config = GRPOConfig(**common, **online)
        return GRPOTrainer(str(fixture_path("llama")), config, train_dataset=task.prompt_only("train", 8), reward_funcs=[_length])
    if algorithm == "ppo":
        # one rollout batch of 4 completions per optimizer step; the critic (a copy of the
        # backbone with a value head) and the KL reference must come back exactly too
        online = dict(reference_mode=mode, kl_coef=0.1, batch_size=4, ppo_epochs=1, max_completion_length=6, temperature=1.5)
        config = PPOConfig(**common, **online)
        return PPOTrainer(str(fixture_path("llama")), config, train_dataset=task.prompt_only("train", 16), reward_funcs=[_length])
    return KTOTrainer(str(fixture_path("llama")), KTOConfig(**common, **reference), train_dataset=task.unpaired("train", 8))


def _length(completions):
    """A reward that differs inside every group: the completion's length in characters."""
    return [float(len(c)) for c in completions]


def die_after(step: int):
    """A callback that kills its process (SIGKILL: no clean-up of any kind) once ``step`` is done."""

    def callback(trainer, state):
        if state.step == step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def _interrupt_requested() -> bool:
    """Whether the loop's SIGINT handler (a bound method of its guard) has seen a SIGINT."""
    handler = signal.getsignal(signal.SIGINT)
    return bool(getattr(getattr(handler, "__self__", None), "requested", False))


def _wait_for_sigints(run, times: int) -> None:
    """Make the first micro-batch of step KILL_STEP wait for the test's SIGINT(s), so they land
    in the middle of an optimizer step."""
    compute_loss, waited = run.compute_loss, []

    def waiting_compute_loss(module, batch):
        if run.state.step == KILL_STEP - 1 and not waited:
            waited.append(True)
            _say(f"WAITING {os.getpid()}")
            deadline = time.monotonic() + 60
            while not _interrupt_requested() and time.monotonic() < deadline:
                time.sleep(0.01)
            if times == 2:
                _say(f"WAITING {os.getpid()}")
                time.sleep(60)  # the second SIGINT ends the run here, at once
        return compute_loss(module, batch)

    run.compute_loss = waiting_compute_loss


def _first_runs(root: Path, case: str) -> None:
    run = root / case
    trainer(case, run / "full", run / "cache-full").train()
    interrupted = trainer(case, run / "cut", run / "cache-cut")
    if case in (SIGINT, SIGINT2):
        _wait_for_sigints(interrupted, 2 if case == SIGINT2 else 1)
    else:
        interrupted.callbacks.append(die_after(KILL_STEP))
    interrupted.train()


def _resume_runs(root: Path, cases: list[str]) -> None:
    for case in cases:
        trainer(case, root / case / "cut", root / case / "cache-cut", resume_from_checkpoint="latest").train()


def _say(line: str) -> None:
    """One line to the test, in a single write (several children share the pipe)."""
    os.write(_REPORT_FD, f"{line}\n".encode())


_REPORT_FD = 1  # a child's stdout goes to its log file; its reports go here


def _fork(name: str, root: Path, work, *args) -> int:
    """Run ``work(*args)`` in a child process whose output goes to ROOT/<name>.log; the child
    ends with its own exit code."""
    global _REPORT_FD
    sys.stdout.flush()  # or the child would print the parent's buffered output again
    pid = os.fork()
    if pid:
        return pid
    _REPORT_FD = os.dup(1)
    log = os.open(root / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code, error = 0, "-"
    try:
        torch.set_num_threads(1)  # bit-identical runs need the same reduction order in every process
        work(*args)
    except BaseException as exception:  # noqa: BLE001 - reported to the test, which judges it
        traceback.print_exc()
        code, error = 1, type(exception).__name__
    sys.stdout.flush()
    sys.stderr.flush()
    _say(f"EXIT {name} {os.getpid()} {code} {error}")
    os._exit(code)


def _wait(children: dict[int, str]) -> None:
    while children:
        pid, status = os.wait()
        name = children.pop(pid)
        if os.WIFSIGNALED(status):
            _say(f"EXIT {name} {pid} -{os.WTERMSIG(status)} signal")


def _import_everything() -> None:
    """Import what a run imports lazily (most of a trainer's first start-up), by loading the
    fixtures once here; nothing loaded is kept."""
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    AutoTokenizer.from_pretrained(fixture_path("llama"))
    AutoModelForCausalLM.from_pretrained(fixture_path("llama"))
    AutoModelForSequenceClassification.from_pretrained(fixture_path("classifier-llama"))


def main(root: str, cases: list[str]) -> None:
    _import_everything()
    out = Path(root)
    first = {_fork(case, out, _first_runs, out, case): case for case in [*cases, SIGINT, SIGINT2]}
    _wait(first)
    _wait({_fork("resume", out, _resume_runs, out, [*cases, SIGINT]): "resume"})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
