"""Metrics accumulated on device and reduced across processes only when they are read.

An objective reports each metric as a *sum and a count* (``Metric.mean(total, count)``), or as
an extreme (``Metric.max`` / ``Metric.min``). Averaging sums over micro-batches, steps and
processes gives exact means — a mean of per-batch means would weigh a batch of 3 loss tokens
like a batch of 3,000.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Metric:
    """One metric observation: ``kind`` is ``mean`` (value = sum, count = weight), ``max`` or ``min``."""

    kind: str
    value: torch.Tensor
    count: torch.Tensor | float = 1.0

    @staticmethod
    def mean(total, count=1.0) -> Metric:
        return Metric("mean", _detach(total), _detach(count))

    @staticmethod
    def max(value) -> Metric:
        return Metric("max", _detach(value))

    @staticmethod
    def min(value) -> Metric:
        return Metric("min", _detach(value))


def _detach(x):
    return x.detach().float() if isinstance(x, torch.Tensor) else torch.tensor(float(x))


class MetricAccumulator:
    """Running totals of :class:`Metric` observations."""

    def __init__(self):
        self._values: dict[str, Metric] = {}

    def update(self, metrics: dict[str, Metric]) -> None:
        for name, metric in metrics.items():
            seen = self._values.get(name)
            if seen is None:
                self._values[name] = Metric(metric.kind, metric.value.clone(), _as_tensor(metric.count))
            else:
                seen.value = _combine(seen.value, metric.value, metric.kind)
                if metric.kind == "mean":
                    seen.count = _combine(seen.count, _as_tensor(metric.count), "mean")

    def __bool__(self) -> bool:
        return bool(self._values)

    def compute(self, accelerator=None) -> dict[str, float]:
        """Reduce across processes (when ``accelerator`` has several), return plain floats and
        reset. Means with a zero total count are left out."""
        values = self._values
        self._values = {}
        if accelerator is not None and accelerator.num_processes > 1:
            values = _reduce_across_processes(values, accelerator)
        out = {}
        for name in sorted(values):
            metric = values[name]
            if metric.kind == "mean":
                count = float(_as_tensor(metric.count))
                if count > 0:
                    out[name] = float(metric.value) / count
            else:
                out[name] = float(metric.value)
        return out


def _as_tensor(count) -> torch.Tensor:
    return count if isinstance(count, torch.Tensor) else torch.tensor(float(count))


def _combine(running: torch.Tensor, new: torch.Tensor, kind: str) -> torch.Tensor:
    """``running`` and ``new`` (0-dim) summed (``mean``) or their max/min, without a blocking copy:
    a host scalar meeting a device tensor becomes a Python number (a kernel argument), because
    moving it with ``.to(device)`` would wait for all queued device work."""
    a, b = running, new
    if a.device != b.device:
        if b.device.type == "cpu":
            b = b.item()
        elif a.device.type == "cpu":
            a, b = b, a.item()  # all three operations are symmetric
        else:
            b = b.to(a.device)
    if kind == "mean":
        return a + b
    if isinstance(b, float):
        return a.clamp(min=b) if kind == "max" else a.clamp(max=b)
    return torch.maximum(a, b) if kind == "max" else torch.minimum(a, b)


def _reduce_across_processes(values: dict[str, Metric], accelerator) -> dict[str, Metric]:
    """Processes may have seen different metric names (e.g. a turn index only one had), so the
    names are unioned first; a missing mean contributes 0/0, a missing extreme is ignored."""
    from accelerate.utils import gather_object

    kinds: dict[str, str] = {}
    for names in gather_object([[(n, m.kind) for n, m in values.items()]]):
        kinds.update(dict(names))
    device = accelerator.device
    reduced = {}
    for name in sorted(kinds):
        kind = kinds[name]
        metric = values.get(name)
        if kind == "mean":
            local = torch.stack([metric.value, _as_tensor(metric.count)]) if metric else torch.zeros(2)
            total = accelerator.reduce(local.to(device).float(), reduction="sum")
            reduced[name] = Metric("mean", total[0], total[1])
        else:
            fill = float("-inf") if kind == "max" else float("inf")
            local = metric.value if metric else torch.tensor(fill)
            gathered = accelerator.gather(local.to(device).float().reshape(1))
            reduced[name] = Metric(kind, gathered.max() if kind == "max" else gathered.min())
    return reduced
