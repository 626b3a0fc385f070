import math

import pytest
import torch

from posttrain.losses.preference import (
    PREFERENCE_LOSSES,
    PreferenceLogps,
    preference_loss,
    preference_metrics,
)

BETA = 0.1


def _logps(requires_grad: bool = False) -> PreferenceLogps:
    # pair 0: h = (-1 - (-3)) - (-2 - (-2.5)) = 2 - 0.5 = 1.5
    # pair 1: h = (-4 - (-3.5)) - (-3 - (-3.5)) = -0.5 - 0.5 = -1
    return PreferenceLogps(
        policy_chosen=torch.tensor([-1.0, -4.0], requires_grad=requires_grad),
        policy_rejected=torch.tensor([-2.0, -3.0], requires_grad=requires_grad),
        ref_chosen=torch.tensor([-3.0, -3.5]),
        ref_rejected=torch.tensor([-2.5, -3.5]),
        chosen_lengths=torch.tensor([2, 4]),
        rejected_lengths=torch.tensor([1, 5]),
    )


def _nls(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def _close(tensor, values, atol=1e-6):
    torch.testing.assert_close(tensor, torch.tensor(values), atol=atol, rtol=0)


def test_sigmoid_dpo_hand_values():
    losses, chosen, rejected = PREFERENCE_LOSSES["sigmoid"](_logps(), beta=BETA)
    # -log sigmoid(0.1 * 1.5) = log(1 + e^-0.15) = 0.62096; -log sigmoid(-0.1) = 0.74440
    _close(losses, [_nls(0.15), _nls(-0.1)])
    assert _nls(0.15) == pytest.approx(0.62096, abs=1e-5)
    # implicit rewards beta * (policy - ref): chosen 0.1*2, 0.1*-0.5; rejected 0.1*0.5 twice
    _close(chosen, [0.2, -0.05])
    _close(rejected, [0.05, 0.05])


def test_conservative_dpo_hand_values_and_zero_smoothing_is_plain():
    losses, _, _ = PREFERENCE_LOSSES["sigmoid"](_logps(), beta=BETA, label_smoothing=0.1)
    # 0.9 * (-log sigmoid(beta h)) + 0.1 * (-log sigmoid(-beta h))
    _close(losses, [0.9 * _nls(0.15) + 0.1 * _nls(-0.15), 0.9 * _nls(-0.1) + 0.1 * _nls(0.1)])
    plain = PREFERENCE_LOSSES["sigmoid"](_logps(), beta=BETA)[0]
    for name in ("sigmoid", "robust"):
        torch.testing.assert_close(PREFERENCE_LOSSES[name](_logps(), beta=BETA, label_smoothing=0.0)[0], plain)


def test_robust_dpo_hand_values():
    losses, _, _ = PREFERENCE_LOSSES["robust"](_logps(), beta=BETA, label_smoothing=0.1)
    # [(1 - 0.1) L(beta h) - 0.1 L(-beta h)] / (1 - 0.2), L(x) = -log sigmoid(x)
    expected = [(0.9 * _nls(0.15) - 0.1 * _nls(-0.15)) / 0.8, (0.9 * _nls(-0.1) - 0.1 * _nls(0.1)) / 0.8]
    _close(losses, expected)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        PREFERENCE_LOSSES["robust"](_logps(), label_smoothing=0.5)


def test_hinge_hand_values():
    # beta 0.1: max(0, 1 - 0.15) = 0.85, max(0, 1 + 0.1) = 1.1; beta 1: max(0, -0.5) = 0, 2
    _close(PREFERENCE_LOSSES["hinge"](_logps(), beta=BETA)[0], [0.85, 1.1])
    _close(PREFERENCE_LOSSES["hinge"](_logps(), beta=1.0)[0], [0.0, 2.0])


def test_ipo_hand_values():
    # length-normalised h: pair 0: 2/2 - 0.5/1 = 0.5; pair 1: -0.5/4 - 0.5/5 = -0.225
    # target 1/(2*0.1) = 5: (0.5 - 5)^2 = 20.25, (-0.225 - 5)^2 = 27.300625
    losses, chosen, _ = PREFERENCE_LOSSES["ipo"](_logps(), beta=BETA)
    _close(losses, [20.25, 27.300625], atol=1e-4)
    _close(chosen, [0.2, -0.05])
    # paper's literal form with summed log-ratios: (1.5 - 5)^2 = 12.25, (-1 - 5)^2 = 36
    _close(PREFERENCE_LOSSES["ipo"](_logps(), beta=BETA, ipo_length_normalize=False)[0], [12.25, 36.0], atol=1e-4)


def test_simpo_hand_values_ignores_reference():
    # rewards 2 * logp / len: chosen 2*-1/2 = -1, 2*-4/4 = -2; rejected 2*-2/1 = -4, 2*-3/5 = -1.2
    # logits: -1 - (-4) - 0.5 = 2.5; -2 - (-1.2) - 0.5 = -1.3
    logps = _logps()
    losses, chosen, rejected = PREFERENCE_LOSSES["simpo"](logps, beta=2.0, gamma=0.5)
    _close(losses, [_nls(2.5), _nls(-1.3)])
    _close(chosen, [-1.0, -2.0])
    _close(rejected, [-4.0, -1.2])
    logps.ref_chosen = logps.ref_rejected = None
    _close(PREFERENCE_LOSSES["simpo"](logps, beta=2.0, gamma=0.5)[0], [_nls(2.5), _nls(-1.3)])


def test_nll_hand_values():
    # -log pi(chosen) / |chosen|: pair 0: 1 / 2 = 0.5, pair 1: 4 / 4 = 1.0; rewards are zero
    losses, chosen, rejected = PREFERENCE_LOSSES["nll"](_logps())
    _close(losses, [0.5, 1.0])
    _close(chosen, [0.0, 0.0])
    # combined with DPO it adds to the sigmoid loss pair by pair
    combined = preference_loss(_logps(), ["sigmoid", "nll"], [1.0, 0.5], beta=BETA)[0]
    _close(combined, [_nls(BETA * 1.5) + 0.25, _nls(BETA * -1.0) + 0.5])


@pytest.mark.parametrize("name", sorted(set(PREFERENCE_LOSSES) - {"nll"}))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    logps = _logps(requires_grad=True)
    losses, chosen, rejected = preference_loss(logps, [name], beta=BETA if name != "simpo" else 2.0)
    losses.sum().backward()
    # gradient descent moves against the gradient: chosen logp up, rejected logp down
    assert torch.all(logps.policy_chosen.grad < 0)
    assert torch.all(logps.policy_rejected.grad > 0)
    assert not chosen.requires_grad and not rejected.requires_grad


def test_dpo_gradient_hand_value():
    logps = _logps(requires_grad=True)
    preference_loss(logps, ["sigmoid"], beta=BETA)[0].sum().backward()
    # d/d(policy_chosen) of -log sigmoid(beta h) = -beta * sigmoid(-beta h)
    expected = [-BETA / (1 + math.exp(0.15)), -BETA / (1 + math.exp(-0.1))]
    _close(logps.policy_chosen.grad, expected)


def test_combined_losses_are_the_weighted_sum():
    combined, chosen, rejected = preference_loss(
        _logps(), ["sigmoid", "ipo"], [1.0, 0.5], beta=BETA, label_smoothing=0.0, gamma=1.0
    )
    sigmoid = PREFERENCE_LOSSES["sigmoid"](_logps(), beta=BETA)
    ipo = PREFERENCE_LOSSES["ipo"](_logps(), beta=BETA)
    torch.testing.assert_close(combined, sigmoid[0] + 0.5 * ipo[0])
    # sum of the hand values: 0.62096 + 0.5 * 20.25
    assert combined[0].item() == pytest.approx(_nls(0.15) + 10.125, abs=1e-4)
    torch.testing.assert_close(chosen, sigmoid[1])  # rewards of the first loss type
    torch.testing.assert_close(rejected, sigmoid[2])
    unweighted = preference_loss(_logps(), ["sigmoid", "hinge"], beta=BETA)[0]
    torch.testing.assert_close(unweighted, sigmoid[0] + PREFERENCE_LOSSES["hinge"](_logps(), beta=BETA)[0])


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown preference loss type.*'dpo'.*valid: sigmoid, robust, hinge, ipo, simpo"):
        preference_loss(_logps(), ["dpo"])
    with pytest.raises(ValueError, match="hyper-parameter.*'betta'"):
        preference_loss(_logps(), ["sigmoid"], betta=0.1)
    with pytest.raises(ValueError, match="2 loss weights for 1 loss types"):
        preference_loss(_logps(), ["sigmoid"], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        preference_loss(_logps(), [])
    no_ref = _logps()
    no_ref.ref_chosen = None
    with pytest.raises(ValueError, match="'sigmoid' needs reference log-probs"):
        preference_loss(no_ref, ["sigmoid"])
    no_lengths = _logps()
    no_lengths.chosen_lengths = None
    with pytest.raises(ValueError, match="'simpo' needs chosen_lengths"):
        preference_loss(no_lengths, ["simpo"])


def test_preference_metrics_hand_values():
    logps = _logps(requires_grad=True)
    _, chosen, rejected = preference_loss(logps, ["sigmoid"], beta=BETA)
    metrics = preference_metrics(chosen, rejected, logps)
    # chosen rewards [0.2, -0.05], rejected [0.05, 0.05]
    assert metrics["rewards/chosen"].item() == pytest.approx(0.075)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.05)
    assert metrics["rewards/accuracies"].item() == 0.5  # 0.2 > 0.05, -0.05 < 0.05
    assert metrics["rewards/margins"].item() == pytest.approx(0.025)  # (0.15 - 0.1) / 2
    assert metrics["logps/chosen"].item() == -2.5 and metrics["logps/rejected"].item() == -2.5
    assert all(not value.requires_grad for value in metrics.values())
