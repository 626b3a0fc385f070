"""Metrics are sums and counts, so means are exact across uneven micro-batches."""

import torch

from posttrain.train.metrics import Metric, MetricAccumulator


def test_means_weigh_by_count_not_by_batch():
    acc = MetricAccumulator()
    acc.update({"loss": Metric.mean(torch.tensor(3.0), 3)})  # 3 tokens with loss 1.0
    acc.update({"loss": Metric.mean(torch.tensor(60.0), 20)})  # 20 tokens with loss 3.0
    # (3 + 60) / (3 + 20) = 2.7391..., not the mean of batch means (1 + 3) / 2 = 2
    assert abs(acc.compute()["loss"] - 63 / 23) < 1e-6


def test_extremes_and_reset():
    acc = MetricAccumulator()
    acc.update({"max": Metric.max(torch.tensor(2.0)), "min": Metric.min(torch.tensor(2.0))})
    acc.update({"max": Metric.max(torch.tensor(5.0)), "min": Metric.min(torch.tensor(-1.0))})
    assert acc.compute() == {"max": 5.0, "min": -1.0}
    assert acc.compute() == {}


def test_zero_count_means_are_left_out():
    acc = MetricAccumulator()
    acc.update({"loss/turn_3": Metric.mean(torch.tensor(0.0), torch.tensor(0.0)), "loss": Metric.mean(1.0, 1)})
    assert acc.compute() == {"loss": 1.0}
