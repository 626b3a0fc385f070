"""``posttrain report RUN [RUN ...]``: charts of each run's ``metrics.jsonl`` and a one-page
``report.md`` that shows them with the run's ``config.yaml``. Written at the end of every run
too. Several runs are overlaid on the same axes (one colour per run) for comparison.

Charts are grouped by name: ``training`` (loss with train solid and eval dashed, learning
rate, grad norm), then one chart per family of slash-named metrics (``rewards/*``, ``logps/*``,
``loss/turn_*``, ``objective/*``...), then the remaining plain metrics (``token_accuracy``,
``entropy``, ``kl``, ``completion_length``, ``tokens_per_second``...) together as ``metrics``;
each metric gets its own panel, and an ``eval/`` metric shares the panel of its training twin.
Counters (``epoch``, ``tokens_seen``) are not plotted.

matplotlib is optional (``pip install 'posttrain[plots]'``): without it the page is written
without charts and says so. Figures are drawn on matplotlib's Agg canvas directly, without
pyplot, so the caller's matplotlib backend is left alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posttrain.errors import UserError
from posttrain.registry import headline_metrics

NOT_PLOTTED = ("epoch", "tokens_seen", "step", "time")
TRAINING_GROUP, TRAINING_PANELS = "training", ("loss", "learning_rate", "grad_norm")
OTHER_GROUP = "metrics"
MISSING_MATPLOTLIB = "charts skipped: matplotlib is not installed (pip install 'posttrain[plots]')"


@dataclass
class Run:
    """One run directory: its name, metric series ``{name: [(step, value), ...]}`` and config."""

    name: str
    directory: Path
    series: dict[str, list[tuple[int, float]]]
    config: dict = field(default_factory=dict)


@dataclass
class Report:
    """What :func:`write_report` wrote: the page, its charts and a note when charts were skipped."""

    page: Path
    charts: list[Path]
    note: str | None = None


def read_run(directory: str | Path, name: str | None = None) -> Run:
    """A run's metrics and config; a step logged twice (a resumed run) keeps its last value."""
    directory = Path(directory)
    path = directory / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"no metrics at {path}: give the output_dir of a training run")
    values: dict[str, dict[int, float]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}, line {number}: not a JSON record (the file is damaged)") from None
        step = record.get("step")
        for key, value in record.items():
            if key not in NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(step, int):
                values.setdefault(key, {})[step] = float(value)
    config_path = directory / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    series = {key: sorted(points.items()) for key, points in values.items()}
    return Run(name or directory.name, directory, series, config if isinstance(config, dict) else {})


def chart_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """``{chart: [panel metric, ...]}`` for metric ``names``; an ``eval/`` name joins the panel
    of its training twin (panels are named without the prefix)."""
    panels = sorted({name.removeprefix("eval/") for name in names if name.removeprefix("eval/") not in NOT_PLOTTED})
    groups: dict[str, list[str]] = {}
    if any(name in panels for name in TRAINING_PANELS):
        groups[TRAINING_GROUP] = [name for name in TRAINING_PANELS if name in panels]
    for panel in panels:
        if panel in TRAINING_PANELS:
            continue
        family = panel.split("/", 1)[0] if "/" in panel else OTHER_GROUP
        if panel.startswith("loss/turn_"):
            family = "loss_per_turn"
        groups.setdefault(family, []).append(panel)
    return groups


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Report:
    """Charts under ``out_dir/plots`` and ``out_dir/report.md`` for ``run_dirs`` (overlaid).

    ``out_dir`` defaults to the run directory for one run and ``./report`` for several."""
    if not run_dirs:
        raise UserError("no run given: pass one or more output directories of training runs")
    names = _run_names([Path(d) for d in run_dirs])
    runs = [read_run(directory, name) for directory, name in zip(run_dirs, names)]
    out = Path(out_dir) if out_dir is not None else (runs[0].directory if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    groups = chart_groups([key for run in runs for key in run.series])
    try:
        from posttrain.report_plots import draw_group
    except ImportError:
        charts, note = [], MISSING_MATPLOTLIB
    else:
        (out / "plots").mkdir(exist_ok=True)
        charts = [draw_group(title, panels, runs, out / "plots" / f"{title}.png") for title, panels in groups.items()]
        note = None
    page = out / "report.md"
    page.write_text(render_page(runs, charts, out, note))
    return Report(page, charts, note)


def _run_names(directories: list[Path]) -> list[str]:
    names = [d.resolve().name for d in directories]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in directories]


# ----------------------------------------------------------------------------- the page


def render_page(runs: list[Run], charts: list[Path], out: Path, note: str | None) -> str:
    """The Markdown page: a table of final and best numbers, the charts, the configs."""
    title = runs[0].name if len(runs) == 1 else " vs ".join(run.name for run in runs)
    lines = [f"# Training report: {title}", "", *_numbers_table(runs), "", "## Charts", ""]
    if note:
        lines += [f"_{note}_", ""]
    for chart in charts:
        lines += [f"### {chart.stem}", "", f"![{chart.stem}]({chart.relative_to(out).as_posix()})", ""]
    lines += ["## Config", ""]
    if len(runs) > 1:
        lines += [*_config_differences(runs), ""]
    for run in runs:
        header = [f"### {run.name}", ""] if len(runs) > 1 else []
        body = yaml.safe_dump(run.config, sort_keys=False).strip() if run.config else "(no config.yaml)"
        lines += [*header, "```yaml", body, "```", ""]
    return "\n".join(lines)


def _numbers_table(runs: list[Run]) -> list[str]:
    # the loss, then each algorithm's headline metrics (posttrain.registry), each with its eval/ twin
    wanted = [name for metric in ("loss", *headline_metrics()) for name in (metric, f"eval/{metric}")]
    columns = [c for c in wanted if any(c in run.series for run in runs)]
    lines = ["| run | steps | " + " | ".join(f"final {c}" for c in columns) + " | best eval/loss |", "|---" * (len(columns) + 3) + "|"]
    for run in runs:
        steps = max((points[-1][0] for points in run.series.values() if points), default=0)
        finals = [_fmt(run.series[c][-1][1]) if c in run.series else "" for c in columns]
        evals = run.series.get("eval/loss", [])
        best = min(evals, key=lambda point: point[1]) if evals else None
        best_text = f"{_fmt(best[1])} (step {best[0]})" if best else ""
        lines.append(f"| {run.name} | {steps} | " + " | ".join(finals) + f" | {best_text} |")
    return lines


def _config_differences(runs: list[Run]) -> list[str]:
    keys = sorted({key for run in runs for key in run.config})
    differing = [key for key in keys if len({json.dumps(run.config.get(key), sort_keys=True, default=str) for run in runs}) > 1]
    if not differing:
        return ["The runs' configs are identical."]
    lines = ["Options that differ:", "", "| option | " + " | ".join(run.name for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {key} | " + " | ".join(f"`{run.config.get(key)!r}`" for run in runs) + " |" for key in differing]
    return lines


def _fmt(value: float) -> str:
    return str(value) if math.isnan(value) or math.isinf(value) else f"{value:.4g}"
