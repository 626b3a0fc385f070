"""The completion log: what the model writes while it trains, for every trainer.

At the steps it is due (``log_completions_steps``), a trainer hands :class:`CompletionLog` rows
of ``{"prompt", "completion", <numbers> ...}`` (rewards, advantage, ...). They go

- to the console as a Rich panel titled with the step: a table with the prompt and the
  completion in different colours and every number, long text shortened in the middle with a
  visible marker, at most ``num_completions_to_print`` rows (optionally one per unique prompt);
- always, in full, to ``<output_dir>/completions.jsonl`` (one JSON object per row, with the step);
- to TensorBoard as a text table and to wandb as a ``wandb.Table`` when those trackers are on.

Under several processes every process passes its own rows and the main process logs them all
(the gather is collective: every process must call :meth:`CompletionLog.log` at the same steps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

TEXT_FIELDS = ("prompt", "completion")


def shorten_middle(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters by removing its middle, marked
    ``[... N chars ...]`` so nobody mistakes the shortened text for what the model wrote."""
    if limit <= 0 or len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = max(limit - head, 0)
    hidden = len(text) - head - tail
    return f"{text[:head]} [... {hidden} chars ...] {text[len(text) - tail:] if tail else ''}".rstrip()


def prompt_text(prompt) -> str:
    """A prompt as one string: message lists show their last message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt and isinstance(prompt[-1], Mapping):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


class CompletionLog:
    """Logs sampled completions at a fixed interval (see the module docstring)."""

    def __init__(self, accelerator, console, output_dir: str | Path, *, every: int, rows_to_print: int = 8, unique_prompts: bool = False, max_chars: int = 300):
        self.accelerator = accelerator
        self.console = console
        self.path = Path(output_dir) / "completions.jsonl"
        self.every = every
        self.rows_to_print = rows_to_print
        self.unique_prompts = unique_prompts
        self.max_chars = max_chars

    def due(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    def log(self, step: int, rows: list[dict]) -> None:
        """Record ``rows`` for optimizer ``step`` (collective under several processes)."""
        acc = self.accelerator
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        if not acc.is_main_process or not rows:
            return
        rows = [{"prompt": prompt_text(r["prompt"]), **{k: v for k, v in r.items() if k != "prompt"}} for r in rows]
        self._append_jsonl(step, rows)
        self.console.print(self.panel(step, rows))
        self._to_trackers(step, rows)

    def panel(self, step: int, rows: list[dict]) -> Panel:
        shown = self._rows_to_show(rows)
        numbers = [k for k in rows[0] if k not in TEXT_FIELDS]  # numbers, or short texts
        table = Table(show_lines=True, expand=True)
        table.add_column("prompt", style="cyan", ratio=2)
        table.add_column("completion", style="green", ratio=3)
        for name in numbers:
            table.add_column(name, justify="right", no_wrap=True)
        for row in shown:
            cells = [escape(shorten_middle(str(row[f]), self.max_chars)) for f in TEXT_FIELDS]
            table.add_row(*cells, *(_cell(row.get(name), self.max_chars // 3) for name in numbers))
        hidden = len(rows) - len(shown)
        subtitle = f"{len(shown)} of {len(rows)} rows; all in {self.path.name}" if hidden else None
        return Panel(table, title=f"completions at step {step}", subtitle=subtitle)

    def _rows_to_show(self, rows: list[dict]) -> list[dict]:
        if self.unique_prompts:
            seen, unique = set(), []
            for row in rows:
                if row["prompt"] not in seen:
                    seen.add(row["prompt"])
                    unique.append(row)
            rows = unique
        return rows[: self.rows_to_print]

    def _append_jsonl(self, step: int, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps({"step": step, **row}) + "\n")

    def _to_trackers(self, step: int, rows: list[dict]) -> None:
        columns = list(rows[0])
        for tracker in getattr(self.accelerator, "trackers", []):
            if tracker.name == "tensorboard":
                tracker.writer.add_text("completions", _markdown_table(columns, rows), global_step=step)
                tracker.writer.flush()
            elif tracker.name == "wandb":
                import wandb

                table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
                tracker.log({"completions": table}, step=step)


def _cell(value, limit: int) -> str:
    return escape(shorten_middle(value, limit)) if isinstance(value, str) else _number(value)


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _markdown_table(columns: list[str], rows: list[dict]) -> str:
    """A Markdown table (TensorBoard renders Markdown in its text tab)."""

    def cell(value) -> str:
        text = _number(value) if not isinstance(value, str) else value
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
