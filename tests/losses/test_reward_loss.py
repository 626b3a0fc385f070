import math

import pytest
import torch

from posttrain.losses.reward import bradley_terry_loss

CHOSEN = [2.0, -1.0, 0.5]
REJECTED = [1.0, 0.5, 0.5]


def _neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_bradley_terry_hand_values():
    # r_c - r_r = [1, -1.5, 0]; loss = log(1 + e^-d) = [0.31326, 1.70141, 0.69315]
    losses, metrics = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED))
    expected = [_neg_log_sigmoid(1.0), _neg_log_sigmoid(-1.5), math.log(2.0)]
    torch.testing.assert_close(losses, torch.tensor(expected))
    assert expected[0] == pytest.approx(0.31326, abs=1e-5)
    # accuracy: only pair 0 has r_c > r_r (ties do not count) -> 1/3
    assert metrics["accuracy"].item() == pytest.approx(1 / 3)
    # margin mean (1 - 1.5 + 0) / 3 = -1/6; rewards over all six: sum 3.5, min -1, max 2
    assert metrics["margin"].item() == pytest.approx(-1 / 6)
    assert metrics["rewards/mean"].item() == pytest.approx(3.5 / 6)
    assert metrics["rewards/min"].item() == -1.0 and metrics["rewards/max"].item() == 2.0
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(2 / 3)


def test_bradley_terry_margin_and_centering():
    margin = torch.tensor([0.5, 0.0, 1.0])
    # logits d - m = [0.5, -1.5, -1]; centering 0.01 * (r_c + r_r)^2 = 0.01 * [9, 0.25, 1]
    losses, metrics = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED), margin, center_coefficient=0.01)
    expected = [
        _neg_log_sigmoid(0.5) + 0.09,
        _neg_log_sigmoid(-1.5) + 0.0025,
        _neg_log_sigmoid(-1.0) + 0.01,
    ]
    torch.testing.assert_close(losses, torch.tensor(expected))
    # The accuracy ignores the margin: still 1/3.
    assert metrics["accuracy"].item() == pytest.approx(1 / 3)


def test_bradley_terry_gradient_separates_rewards_and_metrics_are_detached():
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    losses, metrics = bradley_terry_loss(chosen, rejected)
    losses.sum().backward()
    assert torch.all(chosen.grad < 0) and torch.all(rejected.grad > 0)
    # d/dr_c of log(1 + e^-d) = -sigmoid(-d): pair 2 (d = 0) gives -0.5
    assert chosen.grad[2].item() == pytest.approx(-0.5)
    assert all(not value.requires_grad for value in metrics.values())
