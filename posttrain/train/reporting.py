"""Where metrics go: the console (Rich progress bar and one line per logging step), a local
``metrics.jsonl`` that is always written, and accelerate's trackers (TensorBoard, wandb)."""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Shown first on a console line, in this order; everything else follows alphabetically.
_LEADING = ("loss", "eval/loss", "token_accuracy", "learning_rate", "grad_norm")


class RunReporter:
    """Console, ``metrics.jsonl`` and trackers for one run (only the main process writes)."""

    def __init__(self, accelerator, output_dir: str | Path, *, progress_bar: bool = True, console: Console | None = None):
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.console = console or Console(highlight=False)
        self.metrics_path = Path(output_dir) / "metrics.jsonl"
        self._progress: Progress | None = None
        self._task = None
        self._show_progress = progress_bar and self.enabled
        self._started = time.perf_counter()

    def start(self, total_steps: int, completed: int = 0) -> None:
        if self.enabled:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if not self._show_progress:
            return
        self._progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=completed, status="")

    def advance(self, step: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=status)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` for optimizer ``step`` everywhere (main process only)."""
        if not self.enabled or not metrics:
            return
        record = {"step": step, "time": round(time.perf_counter() - self._started, 3), **metrics}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.accelerator.log(metrics, step=step)
        self.print(format_metrics(step, metrics))

    def rewind(self, step: int, *other_logs: Path) -> None:
        """Drop the records of steps after ``step`` from ``metrics.jsonl`` and the other JSON-lines
        logs given: a run that starts (or resumes) at ``step`` logs them again, and each step must
        appear once."""
        if not self.enabled:
            return
        for path in (self.metrics_path, *other_logs):
            dropped = drop_records_after(path, step)
            if dropped:
                self.print(f"{path}: dropped {dropped} record(s) after step {step}; this run redoes those steps")

    def print(self, *objects) -> None:
        if self.enabled:
            self.console.print(*objects)

    def print_verbatim(self, text: str) -> None:
        """``text`` as it is: no Rich markup (a path or command may hold brackets), no line
        breaks inserted (a command must stay copyable)."""
        if self.enabled:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def format_metrics(step: int, metrics: dict[str, float]) -> str:
    """``step 20 | loss 1.2345 | token_accuracy 0.5120 | learning_rate 1.9e-05 | ...``"""
    names = [n for n in _LEADING if n in metrics] + sorted(n for n in metrics if n not in _LEADING)
    parts = [f"step {step}"] + [f"{name} {_format_value(metrics[name])}" for name in names]
    return " | ".join(parts)


def _format_value(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.3e}"
    return f"{value:.4f}"


def drop_records_after(path: Path, step: int) -> int:
    """Rewrite the JSON-lines file ``path`` without the records of steps after ``step`` (and
    without a torn last line left by a killed writer); returns how many lines went. The new
    file is written beside the old one and renamed over it, so a kill now loses nothing."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) == len(lines):
        return 0
    staging = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    staging.write_text("".join(line + "\n" for line in kept))
    staging.replace(path)
    return len(lines) - len(kept)


def _record_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf  # not a whole record


def resume_command(argv: Sequence[str]) -> str:
    """How to continue an interrupted run started by the command line ``argv``
    (``sys.argv``): the ``posttrain`` command again with ``resume_from_checkpoint=latest``, or, for
    a script of one's own, the script again with that option set."""
    arguments = [a for a in argv[1:] if not a.startswith("resume_from_checkpoint=")]
    program = Path(argv[0]).name if argv else ""
    if program == "posttrain" or (program == "__main__.py" and Path(argv[0]).parent.name == "posttrain"):
        return shlex.join(["posttrain", *arguments, "resume_from_checkpoint=latest"])
    script = shlex.join(["python", *argv]) if argv and argv[0] not in ("", "-c") else "your script"
    return f'{script}, with resume_from_checkpoint="latest" added to the trainer\'s options'
