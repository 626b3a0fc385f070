"""Where metrics go: the console (Rich progress bar and one line per logging step), a local
``metrics.jsonl`` that is always written, and accelerate's trackers (TensorBoard, wandb). At the
end of a run: a summary on the console, and ``report.md`` with charts (:mod:`posttrain.report`)."""

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

from posttrain.train.summary import RunSummary, format_metrics


class RunReporter:
    """Console, ``metrics.jsonl`` and trackers for one run (only the main process writes)."""

    def __init__(self, accelerator, output_dir: str | Path, *, progress_bar: bool = True, console: Console | None = None):
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.console = console or Console(highlight=False)
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self._progress: Progress | None = None
        self._task = None
        self._show_progress = progress_bar and self.enabled
        self._started = time.perf_counter()
        self._training: list[float] = []  # perf_counter at start() and close()
        self._total_steps: int | None = None
        self.summary = RunSummary()
        self.listeners: list = []  # called with (step, metrics) for every record
        self.run_started = False  # records go to files once a run owns the output directory

    def begin_run(self) -> None:
        """The run owns the output directory from now on: records are written to its files."""
        self.run_started = True
        if self.enabled:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)

    def start(self, total_steps: int, completed: int = 0) -> None:
        self._training = [time.perf_counter()]
        self._total_steps = total_steps
        self.begin_run()
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
        """Record ``metrics`` for optimizer ``step`` everywhere: the ``listeners`` on every
        process (the trainer's log history and callbacks), the files and console on the main
        process only."""
        if not metrics:
            return
        for listener in self.listeners:
            listener(step, metrics)
        if not self.enabled:
            return
        if not self.run_started:  # before the run starts (an evaluation first): the console only
            self.console.print(format_metrics(step, metrics), markup=False, soft_wrap=True)
            return
        record = {"step": step, "time": round(time.perf_counter() - self._started, 3), **metrics}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.accelerator.log(metrics, step=step)
        self.summary.add(step, metrics)
        if self.enabled:
            self.console.print(format_metrics(step, metrics, self._total_steps), markup=False, soft_wrap=True)

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
            self.console.print(*objects, soft_wrap=True)

    def print_verbatim(self, text: str) -> None:
        """``text`` as it is: no Rich markup (a path or command may hold brackets), no line
        breaks inserted (a command must stay copyable)."""
        if self.enabled:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if len(self._training) == 1:
            self._training.append(time.perf_counter())
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self, state, model_dir: Path | None = None) -> None:
        """End of a run: write ``report.md`` and its charts, then print the summary."""
        if not self.enabled:
            return
        report = self._write_report()
        train_seconds = self._training[1] - self._training[0] if len(self._training) == 2 else 0.0
        config = self.output_dir / "config.yaml"
        places = {
            "model": model_dir,
            "metrics": self.metrics_path if self.metrics_path.exists() else None,
            "config": config if config.exists() else None,
            "report": report,
        }
        lines = self.summary.lines(
            steps=state.step, total_steps=state.total_steps, seconds=time.perf_counter() - self._started,
            train_seconds=train_seconds, tokens=state.tokens_seen, places=places,
        )
        self.console.rule("[bold]run summary", style="dim")
        for line in lines:
            self.console.print(line, markup=False, soft_wrap=True)

    def _write_report(self) -> Path | None:
        if not self.metrics_path.exists():
            return None
        from posttrain.report import write_report

        try:
            report = write_report([self.output_dir])
        except Exception as error:  # noqa: BLE001 - a chart must never fail a finished run; say so and go on
            self.console.print(f"[yellow]warning[/]: could not write the report ({type(error).__name__}: {error})")
            return None
        if report.note:
            self.console.print(f"report: {report.note}", markup=False, soft_wrap=True)
        return report.page


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
