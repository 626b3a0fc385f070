"""What changed inside the optimizer step for GPU efficiency (issue 9, must-show 1): the AdamW
kernel choice gives the same training, the host-side counts and the single finite check give the
normaliser and the stops the step always had, and metrics combine without device copies."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from posttrain import SFTConfig, SFTTrainer
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_tensors_close_to_scale
from posttrain.train.host_sync import DeferredValue, count_window, first_non_finite, loss_scale
from posttrain.train.metrics import Metric, MetricAccumulator
from posttrain.train.optim import adamw_flags


def test_adamw_flags():
    assert adamw_flags("auto", "cuda") == {"fused": True, "foreach": False}
    assert adamw_flags("auto", "cpu") == {"fused": False, "foreach": True}  # what CPU runs always used
    assert adamw_flags("for_loop", "cuda") == {"fused": False, "foreach": False}
    with pytest.raises(ValueError, match="adamw_implementation"):
        adamw_flags("apex", "cuda")


def _train(model_path, path, **overrides) -> dict[str, torch.Tensor]:
    config = SFTConfig(
        output_dir=str(path), learning_rate=1e-2, loss_mode="assistant", progress_bar=False, logging_steps=0,
        max_steps=3, per_device_train_batch_size=4, max_length=None, weight_decay=0.1, **overrides,
    )
    SFTTrainer(model_path("llama"), config, train_dataset=ArithmeticTask(seed=9).conversations("train", 12, turns=2)).train()
    return load_file(path / "final" / "model.safetensors")


def test_adamw_implementations_train_alike(model_path, tmp_path):
    weights = {name: _train(model_path, tmp_path / name, adamw_implementation=name) for name in ("foreach", "fused", "for_loop")}
    start = load_file(model_path("llama") + "/model.safetensors")
    reference = weights.pop("foreach")
    assert any(not torch.equal(reference[n], start[n]) for n in start)  # the steps did move the weights
    for trained in weights.values():
        assert_tensors_close_to_scale(trained, reference)


class _Processes:
    """An accelerator stand-in for ``count_window``: ``num_processes`` copies of this process."""

    def __init__(self, num_processes):
        self.num_processes, self.device = num_processes, torch.device("cpu")

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor * self.num_processes


def test_counts_stay_on_the_host_in_one_process():
    units, tokens = count_window(_Processes(1), [3.0, torch.tensor(2.0), 4], [10, 7, 9])
    assert isinstance(units, float) and units == 9.0 and tokens == 26
    assert loss_scale(units, 1) == pytest.approx(1 / 9)
    assert loss_scale(0.0, 1) == 1.0  # an all-masked window: the loss is 0 anyway


def test_counts_are_summed_over_processes_without_a_read():
    units, tokens = count_window(_Processes(2), [3.0, 4.0], [10, 6])
    assert isinstance(units, torch.Tensor) and float(units) == 14.0
    assert isinstance(tokens, DeferredValue) and tokens.get() == 32.0
    scale = loss_scale(units, 2)
    assert isinstance(scale, torch.Tensor) and float(scale) == pytest.approx(2 / 14)
    # the device division is the same float32 number as the host quotient
    assert float(scale) == float(torch.tensor(2 / 14, dtype=torch.float32))


@pytest.mark.parametrize(
    ("loss", "grad_norm", "check", "expected"),
    [
        (1.5, 2.0, True, None),
        (math.nan, 2.0, True, "loss"),
        (1.5, math.inf, True, "gradient norm"),
        (math.inf, math.nan, True, "loss"),  # the loss is named first, as before
        (1.5, math.inf, False, None),  # fp16 loss scaling skips such steps itself
        (1.5, None, True, None),
    ],
)
def test_first_non_finite(loss, grad_norm, check, expected):
    grad = None if grad_norm is None else torch.tensor(grad_norm)
    problem = first_non_finite(torch.tensor(loss), grad, check_grad_norm=check)
    assert (problem[0] if problem else None) == expected


def test_metrics_combine_means_and_extremes():
    accumulator = MetricAccumulator()
    accumulator.update({"loss": Metric.mean(torch.tensor(3.0), 2), "peak": Metric.max(torch.tensor(1.0)), "low": Metric.min(3)})
    accumulator.update({"loss": Metric.mean(torch.tensor(5.0), torch.tensor(2.0)), "peak": Metric.max(4.0), "low": Metric.min(torch.tensor(-1.0))})
    accumulator.update({"peak": Metric.max(torch.tensor(2.0)), "low": Metric.min(0.5)})
    assert accumulator.compute() == {"loss": pytest.approx(2.0), "peak": 4.0, "low": -1.0}
