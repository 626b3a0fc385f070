import math

import pytest
import torch

from posttrain.losses.kto import check_weight_ratio, kl_reference_point, kto_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _batch(requires_grad=False):
    policy = torch.tensor([-1.0, -2.0, -3.0], requires_grad=requires_grad)
    ref = torch.tensor([-2.0, -2.0, -1.0])
    desirable = torch.tensor([True, False, True])
    return policy, ref, desirable


def test_kto_hand_values():
    policy, ref, desirable = _batch()
    # r = policy - ref = [1, 0, -2]; z0 = 0.5; beta = 0.1; lambda_D = 1, lambda_U = 1.5
    # ex 0 (desirable):   1   * (1 - sigmoid(0.1 * (1 - 0.5)))  = 1 - sigmoid(0.05)  = 0.48750
    # ex 1 (undesirable): 1.5 * (1 - sigmoid(0.1 * (0.5 - 0)))  = 1.5 * 0.48750      = 0.73126
    # ex 2 (desirable):   1   * (1 - sigmoid(0.1 * (-2 - 0.5))) = 1 - sigmoid(-0.25) = 0.56218
    losses, rewards = kto_loss(policy, ref, desirable, torch.tensor(0.5), 0.1, desirable_weight=1.0, undesirable_weight=1.5)
    expected = [1 - _sigmoid(0.05), 1.5 * (1 - _sigmoid(0.05)), 1 - _sigmoid(-0.25)]
    torch.testing.assert_close(losses, torch.tensor(expected))
    assert expected[2] == pytest.approx(0.56218, abs=1e-5)
    torch.testing.assert_close(rewards, torch.tensor([0.1, 0.0, -0.2]))


def test_kto_gradients_and_detached_reference_point():
    policy, ref, desirable = _batch(requires_grad=True)
    z0 = torch.tensor(0.5, requires_grad=True)
    losses, rewards = kto_loss(policy, ref, desirable, z0, 0.1)
    losses.sum().backward()
    # desirable completions are pushed up, the undesirable one down
    assert policy.grad[0] < 0 and policy.grad[2] < 0 and policy.grad[1] > 0
    # d/dr of 1 - sigmoid(beta (r - z0)) = -beta s (1 - s), s = sigmoid(0.05)
    s = _sigmoid(0.05)
    assert policy.grad[0].item() == pytest.approx(-0.1 * s * (1 - s), abs=1e-7)
    assert z0.grad is None and not rewards.requires_grad


def test_kl_reference_point():
    # diffs [1, -2]: mean -0.5, clamped to 0
    policy = torch.tensor([-1.0, -3.0], requires_grad=True)
    value = kl_reference_point(policy, torch.tensor([-2.0, -1.0]))
    assert value.item() == 0.0 and not value.requires_grad
    assert kl_reference_point(policy, torch.tensor([-2.0, -1.0]), clamp=False).item() == -0.5
    # diffs [1, 0.5]: mean 0.75
    assert kl_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.5])).item() == 0.75


def test_check_weight_ratio():
    assert check_weight_ratio(100, 100, 1.0, 1.0) is None  # ratio 1
    assert check_weight_ratio(100, 100, 1.33, 1.0) is None  # 1.33 <= 4/3
    assert check_weight_ratio(4, 3, 1.0, 1.0) is None  # exactly 4/3
    too_high = check_weight_ratio(100, 100, 1.5, 1.0)
    assert too_high is not None and "1.500" in too_high and "[1, 1.333]" in too_high
    # the paper's example: 10% of desirable data kept -> lambda_D in [10, 13.33]
    imbalanced = check_weight_ratio(10, 100, 1.0, 1.0)
    assert imbalanced is not None and "0.100" in imbalanced and "[10, 13.33]" in imbalanced
    assert check_weight_ratio(100, 100, 0.9, 1.0) is not None
    assert check_weight_ratio(10, 100, 13.0, 1.0) is None  # 13 * 10 / 100 = 1.3
    missing = check_weight_ratio(10, 0, 1.0, 1.0)
    assert missing is not None and "0 undesirable" in missing
