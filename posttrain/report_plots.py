"""Drawing the charts of :mod:`posttrain.report` with matplotlib (an optional dependency: this
module fails to import without it, and the report is then written without charts).

One PNG per chart group, one panel per metric; each run has its own colour, training values
are a solid line and evaluation values dashed with markers. Figures are built on the Agg canvas
directly (no pyplot), so nothing global in matplotlib changes.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_MAX_COLUMNS = 3


def draw_group(title: str, panels: list[str], runs: list, path: Path) -> Path:
    """Write ``path``: one panel per metric name in ``panels`` for every run in ``runs``."""
    columns = 2 if len(panels) == 4 else min(_MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    width, height = 4.6 * columns, 3.3 * rows + 0.5
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    # Fixed margins in inches: matplotlib's automatic layouts cost more than the drawing itself.
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.75 / height, wspace=0.32, hspace=0.5)
    for number, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, number + 1)
        _draw_panel(axes, panel, runs)
    figure.suptitle(title.replace("_", " "), fontsize=12, fontweight="bold", y=1 - 0.15 / height, va="top")
    figure.savefig(path)
    return path


def _draw_panel(axes, panel: str, runs: list) -> None:
    several = len(runs) > 1
    for index, run in enumerate(runs):
        colour = _COLOURS[index % len(_COLOURS)]
        prefix = f"{run.name} " if several else ""
        train = run.series.get(panel)
        evaluation = run.series.get(f"eval/{panel}")
        if train:
            steps, values = zip(*train)
            axes.plot(steps, values, color=colour, linewidth=1.4, marker="." if len(train) < 30 else None, label=f"{prefix}train")
        if evaluation:
            steps, values = zip(*evaluation)
            axes.plot(steps, values, color=colour, linewidth=1.2, linestyle="--", marker="o", markersize=4, label=f"{prefix}eval")
    axes.set_title(panel, fontsize=10)
    axes.set_xlabel("step", fontsize=9)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.tick_params(labelsize=8)
    axes.grid(True, alpha=0.3)
    if panel == "learning_rate":
        axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if axes.get_legend_handles_labels()[0] and (several or any(f"eval/{panel}" in run.series for run in runs)):
        axes.legend(fontsize=8)
