"""KL estimators k1/k2/k3 (values, exact expectations, expected gradients) and KL controllers."""

import math

import pytest
import torch

from posttrain.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate


def test_estimator_hand_values_and_gradients():
    # d = logp - ref = (1, -1); rho = ref / pi = exp(-d) = (e^-1, e)
    # k1 = d = (1, -1);  k2 = d^2 / 2 = (0.5, 0.5);  k3 = rho - log rho - 1 = (e^-1 + 1 - 1, e - 1 - 1)
    # gradients w.r.t. logp: k1 -> 1;  k2 -> d;  k3 -> 1 - rho = (1 - e^-1, 1 - e)
    e = math.e
    expected = {
        "k1": ([1.0, -1.0], [1.0, 1.0]),
        "k2": ([0.5, 0.5], [1.0, -1.0]),
        "k3": ([1 / e, e - 2], [1 - 1 / e, 1 - e]),
    }
    assert set(expected) == set(KL_ESTIMATORS)
    for kind, (values, grads) in expected.items():
        logps = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
        ref = torch.tensor([[-2.0, -1.0]], dtype=torch.float64, requires_grad=True)
        out = kl_estimate(logps, ref, kind)
        out.sum().backward()
        torch.testing.assert_close(out, torch.tensor([values], dtype=torch.float64))
        torch.testing.assert_close(logps.grad, torch.tensor([grads], dtype=torch.float64))
        assert ref.grad is None  # the reference is a constant
    assert kl_estimate(torch.tensor([[-1.0]]), torch.tensor([[-2.0]])).item() == pytest.approx(1 / e)  # k3 default


def _categorical():
    """A policy over 4 outcomes (logits with gradient) and a fixed reference."""
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 0.4], dtype=torch.float64), dim=0)
    return logits, ref_logp


def _expected(kind: str):
    """Exact E_{x ~ pi}[k(x)] (sum over outcomes weighted by the detached pi) and its gradient:
    what an estimator gives on average when used as a loss on sampled tokens."""
    logits, ref_logp = _categorical()
    logp = torch.log_softmax(logits, dim=0)
    value = (logp.exp().detach() * kl_estimate(logp[None], ref_logp[None], kind)[0]).sum()
    (grad,) = torch.autograd.grad(value, logits)
    return value, grad


def _exact_kl(forward: bool):
    logits, ref_logp = _categorical()
    logp = torch.log_softmax(logits, dim=0)
    p, q = (ref_logp, logp) if forward else (logp, ref_logp)
    value = (p.exp() * (p - q)).sum()
    (grad,) = torch.autograd.grad(value, logits)
    return value, grad


def test_expectations_and_expected_gradients_on_a_categorical():
    reverse_kl, reverse_grad = _exact_kl(forward=False)
    _, forward_grad = _exact_kl(forward=True)
    assert reverse_kl.item() > 0.1 and (reverse_grad - forward_grad).abs().max() > 0.05  # distinguishable
    k1, k1_grad = _expected("k1")
    k2, k2_grad = _expected("k2")
    k3, k3_grad = _expected("k3")
    # k1 and k3 are unbiased for KL(pi || ref); k2 is not
    torch.testing.assert_close(k1, reverse_kl)
    torch.testing.assert_close(k3, reverse_kl)
    assert abs(k2.item() - reverse_kl.item()) > 1e-3
    # as losses: k1's gradient vanishes in expectation, k2's is the reverse KL's, k3's the forward KL's
    torch.testing.assert_close(k1_grad, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(k2_grad, reverse_grad)
    torch.testing.assert_close(k3_grad, forward_grad)


def test_mask_zeroes_padding_even_where_exp_would_overflow():
    logps = torch.tensor([[-1.0, -2.0, -200.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, 0.0]])  # k3 at the padding would be exp(200) = inf
    mask = torch.tensor([[1, 1, 0]])
    out = kl_estimate(logps, ref, "k3", mask=mask)
    torch.testing.assert_close(out, torch.tensor([[1 / math.e, math.e - 2, 0.0]]))
    out.sum().backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[0, 2] == 0


def test_estimator_errors():
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
    with pytest.raises(ValueError, match="differ in shape"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="mask"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), mask=torch.ones(2, 1))


def test_adaptive_controller_two_updates_hand_values():
    controller = AdaptiveKLController(init_value=0.2, target=6.0, horizon=10000)
    # KL 9: error = clip(9/6 - 1 = 0.5) = 0.2; value = 0.2 * (1 + 0.2 * 256/10000) = 0.2 * 1.00512
    assert controller.update(9.0, n_steps=256) == pytest.approx(0.201024, abs=1e-15)
    # KL 3: error = clip(3/6 - 1 = -0.5) = -0.2; value = 0.201024 * (1 - 0.2 * 512/10000)
    #   = 0.201024 * 0.98976 = 0.19896551424
    assert controller.update(torch.tensor(3.0), n_steps=512) == pytest.approx(0.19896551424, abs=1e-15)
    # KL 6.6: error = 1.1 - 1 = 0.1 (inside the clip); value *= 1 + 0.1 * 100/10000 = 1.001
    assert controller.update(6.6, n_steps=100) == pytest.approx(0.19896551424 * 1.001, abs=1e-15)
    assert controller.value == pytest.approx(0.19916447975424, abs=1e-15)


def test_controllers_restore_exactly():
    uninterrupted = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    for kl in (7.3, 2.1, 6.4):
        uninterrupted.update(kl, 64)
    first = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    first.update(7.3, 64)
    resumed = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(first.state_dict())
    for kl in (2.1, 6.4):
        resumed.update(kl, 64)
    assert resumed.value == uninterrupted.value  # bit-exact
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 64) == 0.05 and fixed.state_dict() == {"value": 0.05}
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError, match="no 'value'"):
        other.load_state_dict({})


def test_controller_errors():
    with pytest.raises(ValueError, match="target must be > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=10000)
    with pytest.raises(ValueError, match="horizon must be > 0"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)
    with pytest.raises(ValueError, match=">= 0"):
        FixedKLController(-0.1)
    with pytest.raises(ValueError, match="finite"):
        AdaptiveKLController(0.1, target=6.0, horizon=10).update(float("nan"), 8)
