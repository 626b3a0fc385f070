"""Numbers for people: one metric line per logging step, and the summary at the end of a run.

A metric line keeps one column order for the whole run (the leading metrics, then the
algorithm's own in alphabetical order, then the counters), prints values to 4 significant
digits, the learning rate in e-notation and tokens per second as a whole number::

    step 20/100 | loss 1.234 | token_accuracy 0.5123 | lr 1.90e-05 | grad_norm 0.8123 | entropy 2.01 | epoch 0.25 | tokens 12,345 | tok/s 1,234
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# Shown first on a line, in this order; then everything else alphabetically; then _TRAILING.
LEADING = ("loss", "eval/loss", "token_accuracy", "eval/token_accuracy", "learning_rate", "grad_norm")
TRAILING = ("epoch", "tokens_seen", "tokens_per_second")
_LABELS = {"learning_rate": "lr", "tokens_seen": "tokens", "tokens_per_second": "tok/s"}


def metric_order(names) -> list[str]:
    names = set(names)
    middle = sorted(n for n in names if n not in LEADING and n not in TRAILING)
    return [n for n in LEADING if n in names] + middle + [n for n in TRAILING if n in names]


def format_value(name: str, value: float) -> str:
    """``value`` of metric ``name`` as people read it."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(float(value))
    if name == "learning_rate":
        return f"{value:.2e}"
    if name in ("tokens_per_second", "tokens_seen"):
        return f"{round(value):,}"
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value)}"
    return f"{value:.4g}"


# A line of more metrics than this (GRPO and PPO log ~30) shows the leading, unprefixed, headline
# and trailing ones and says how many more metrics.jsonl holds.
CONSOLE_LIMIT = 14
HEADLINE = (
    "completions/mean_length", "objective/rlhf_reward", "objective/scores", "objective/kl", "objective/entropy",
    "policy/approxkl_avg", "clip_ratio/region_mean", "val/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
)


def console_metrics(metrics) -> tuple[list[str], int]:
    """The metrics a console line shows, in order, and how many it leaves to metrics.jsonl."""
    order = metric_order(metrics)
    if len(order) <= CONSOLE_LIMIT:
        return order, 0
    shown = [n for n in order if n in LEADING or n in TRAILING or n in HEADLINE or "/" not in n]
    return shown, len(order) - len(shown)


def format_metrics(step: int, metrics: dict[str, float], total_steps: int | None = None) -> str:
    """One console line: ``step 20/100 | loss 1.234 | ... | tok/s 1,234`` (``| +N in
    metrics.jsonl`` when the line leaves some out)."""
    where = f"step {step}/{total_steps}" if total_steps else f"step {step}"
    names, hidden = console_metrics(metrics)
    parts = [where] + [f"{_LABELS.get(name, name)} {format_value(name, metrics[name])}" for name in names]
    if hidden:
        parts.append(f"+{hidden} in metrics.jsonl")
    return " | ".join(parts)


def lower_is_better(name: str) -> bool | None:
    """For the "best" column: True for losses, False for accuracies, None when neither is known."""
    leaf = name.rsplit("/", 1)[-1]
    if "loss" in name:
        return True
    if "accurac" in leaf:
        return False
    return None


@dataclass
class RunSummary:
    """The last value of every metric and the best value of each evaluation metric."""

    last: dict[str, float] = field(default_factory=dict)
    best: dict[str, tuple[float, int]] = field(default_factory=dict)

    def add(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            self.last[name] = value
            direction = lower_is_better(name)
            if not name.startswith("eval/") or direction is None or math.isnan(value):
                continue
            previous = self.best.get(name)
            if previous is None or (value < previous[0] if direction else value > previous[0]):
                self.best[name] = (value, step)

    def lines(self, *, steps: int, total_steps: int, seconds: float, train_seconds: float, tokens: int, places: dict[str, Path | None]) -> list[str]:
        """The end-of-run summary, one string per line."""
        rate = f", {round(tokens / train_seconds):,} tok/s" if train_seconds > 0 and tokens else ""
        lines = [f"steps    {steps}/{total_steps} in {_duration(seconds)} (training {_duration(train_seconds)}), {tokens:,} tokens{rate}"]
        train = {n: v for n, v in self.last.items() if not n.startswith("eval/") and n not in TRAILING and n != "learning_rate"}
        shown = [n for n in metric_order(train) if "/" not in n or n.startswith(("rewards/", "objective/"))][:6]
        if shown:
            lines.append("final    " + " | ".join(f"{n} {format_value(n, train[n])}" for n in shown))
        evaluation = {n: v for n, v in self.last.items() if n.startswith("eval/")}
        if evaluation:
            eval_shown = [n for n in metric_order(evaluation) if n.count("/") == 1 or n.startswith(("eval/rewards/", "eval/objective/"))][:6]
            lines.append("eval     " + " | ".join(f"{n} {format_value(n, evaluation[n])}" for n in eval_shown))
        if self.best:
            lines.append("best     " + " | ".join(f"{n} {format_value(n, v)} (step {s})" for n, (v, s) in sorted(self.best.items()) if n.count("/") == 1 or "accurac" in n))
        for label, path in places.items():
            if path is not None:
                lines.append(f"{label:<8} {path}")
        return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
