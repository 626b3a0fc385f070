"""Clipped policy loss (PPO / DAPO clip-higher / dual clip / GSPO), value loss and explained
variance against hand-derived numbers, and the one-pass identity with -(A * log pi)."""

import math

import pytest
import torch

from posttrain.losses.policy import (
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    log_importance_ratio,
    reinforce_policy_loss,
)
from posttrain.losses.reduce import AGGREGATIONS, aggregate

# Token level, T = 5. Row 0 has A = +2 and 4 real tokens with ratios 1.5, 0.5, 1.1, 1.25; its
# padding holds a log-prob of 50 (exp would overflow to inf if it leaked). Row 1 has A = -1 and
# ratios 1.5, 0.5, 0.9, 4, 0.75.
RATIOS = [[1.5, 0.5, 1.1, 1.25, 1.0], [1.5, 0.5, 0.9, 4.0, 0.75]]
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
ADVANTAGES = torch.tensor([2.0, -1.0])


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _logps(ratios=RATIOS):
    old = torch.full((2, len(ratios[0])), -1.0, dtype=torch.float64)
    logps = (old + torch.tensor(ratios, dtype=torch.float64).log()).detach()
    logps[0, 4] = 50.0
    return logps.requires_grad_(True), old


def _loss_and_grad(**options):
    logps, old = _logps()
    loss, stats = clipped_policy_loss(logps, old, ADVANTAGES, MASK, **options)
    loss.sum().backward()
    return loss.detach(), logps.grad, stats


def test_symmetric_clip_hand_values():
    loss, grad, stats = _loss_and_grad(clip_low=0.2)
    # A = +2, loss = -min(2r, 2 clip(r, 0.8, 1.2)):
    #   r=1.5  -> -min(3.0, 2.4) = -2.4 (clipped high: no gradient)
    #   r=0.5  -> -min(1.0, 1.6) = -1.0 (below the floor but A > 0: unclipped, grad -A r = -1)
    #   r=1.1  -> -2.2                  (grad -2.2)
    #   r=1.25 -> -min(2.5, 2.4) = -2.4 (clipped high)
    # A = -1, loss = -min(-r, -clip(r)) = max(r, clip(r)):
    #   r=1.5 -> 1.5 (above the ceiling but A < 0: unclipped, grad -A r = 1.5)
    #   r=0.5 -> 0.8 (clipped low), r=0.9 -> 0.9 (grad 0.9), r=4 -> 4 (grad 4), r=0.75 -> 0.8 (clipped low)
    torch.testing.assert_close(loss, _f64([[-2.4, -1.0, -2.2, -2.4, 0.0], [1.5, 0.8, 0.9, 4.0, 0.8]]))
    torch.testing.assert_close(grad, _f64([[0.0, -1.0, -2.2, 0.0, 0.0], [1.5, 0.0, 0.9, 4.0, 0.0]]))
    assert stats.clipped_high.tolist() == [[True, False, False, True, False], [False] * 5]
    assert stats.clipped_low.tolist() == [[False] * 5, [False, True, False, False, True]]
    assert not stats.clipped_dual.any()
    # padding: ratio 1, not the exp(51) its log-probs would give
    torch.testing.assert_close(stats.ratio, _f64([[1.5, 0.5, 1.1, 1.25, 1.0], RATIOS[1]]))
    assert not stats.ratio.requires_grad


def test_clip_higher_moves_only_the_ceiling():
    loss, grad, stats = _loss_and_grad(clip_low=0.2, clip_high=0.28)
    # Ceiling 1.28, floor still 0.8. A = +2:
    #   r=1.5  -> -min(3.0, 2.56) = -2.56 (clipped high)
    #   r=1.25 -> -min(2.5, 2.5)  = -2.5  (now inside the range: grad -2.5)
    # A = -1: unchanged, r=0.5 and r=0.75 still clipped low at 0.8.
    torch.testing.assert_close(loss[0], _f64([-2.56, -1.0, -2.2, -2.5, 0.0]))
    torch.testing.assert_close(loss[1], _f64([1.5, 0.8, 0.9, 4.0, 0.8]))
    torch.testing.assert_close(grad[0], _f64([0.0, -1.0, -2.2, -2.5, 0.0]))
    assert stats.clipped_high[0].tolist() == [True, False, False, False, False]
    assert stats.clipped_low[1].tolist() == [False, True, False, False, True]


def test_dual_clip_caps_negative_advantages():
    loss, grad, stats = _loss_and_grad(clip_low=0.2, clip_ratio_c=3.0)
    # A = -1: loss = min(max(r, clip(r)), 3 * |A|): r=4 -> min(4, 3) = 3 with no gradient;
    # r=1.5 -> 1.5 stays. A > 0 is untouched.
    torch.testing.assert_close(loss[1], _f64([1.5, 0.8, 0.9, 3.0, 0.8]))
    torch.testing.assert_close(grad[1], _f64([1.5, 0.0, 0.9, 0.0, 0.0]))
    torch.testing.assert_close(loss[0], _f64([-2.4, -1.0, -2.2, -2.4, 0.0]))
    assert stats.clipped_dual.tolist() == [[False] * 5, [False, False, False, True, False]]


def test_per_token_advantages_match_broadcast_and_act_per_token():
    logps, old = _logps()
    per_sequence, _ = clipped_policy_loss(logps, old, ADVANTAGES, MASK)
    per_token, _ = clipped_policy_loss(logps, old, ADVANTAGES[:, None].expand(2, 5), MASK)
    torch.testing.assert_close(per_token, per_sequence)
    # Flip row 0 token 0 (r = 1.5) to A = -1: loss max(1.5, 1.2) = 1.5, no longer clipped.
    flipped = ADVANTAGES[:, None].expand(2, 5).clone()
    flipped[0, 0] = -1.0
    loss, stats = clipped_policy_loss(logps, old, flipped, MASK)
    assert loss[0, 0].item() == pytest.approx(1.5) and not stats.clipped_high[0, 0]


# Sequence level (GSPO), T = 3. Token log-ratios and the sequence means:
#   row 0: (0.3, 0.1, pad 5.0), A = +1 -> mean 0.2,  s = e^0.2  = 1.221403 > 1.2: clipped high
#   row 1: (-0.4, 0.0, -0.2),   A = -1 -> mean -0.2, s = e^-0.2 = 0.818731 in range: loss s
#   row 2: (-0.6, 0.0, pad 9.0), A = -1 -> mean -0.3, s = e^-0.3 = 0.740818 < 0.8: clipped low
SEQ_LOG_RATIOS = _f64([[0.3, 0.1, 5.0], [-0.4, 0.0, -0.2], [-0.6, 0.0, 9.0]])
SEQ_MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0]])
SEQ_ADVANTAGES = torch.tensor([1.0, -1.0, -1.0])


def _sequence_inputs():
    old = torch.tensor([[-1.0, -2.0, -3.0]] * 3, dtype=torch.float64)
    return (old + SEQ_LOG_RATIOS).requires_grad_(True), old


def test_log_importance_ratio_levels():
    logps, old = _sequence_inputs()
    token = log_importance_ratio(logps, old, SEQ_MASK, "token")
    torch.testing.assert_close(token, SEQ_LOG_RATIOS * SEQ_MASK)
    sequence = log_importance_ratio(logps, old, SEQ_MASK, "sequence")
    torch.testing.assert_close(sequence, _f64([[0.2, 0.2, 0.0], [-0.2] * 3, [-0.3, -0.3, 0.0]]))
    # GSPO-token gradient: d/d logp_t of the sum of the row's log-ratios is 1 per real token
    # (sg[mean] + logp_t - sg[logp_t]), 0 at padding.
    sequence.sum().backward()
    torch.testing.assert_close(logps.grad, SEQ_MASK.to(torch.float64))
    with pytest.raises(ValueError, match="valid: token, sequence"):
        log_importance_ratio(logps, old, SEQ_MASK, "sentence")


def test_sequence_level_clipped_loss_hand_values():
    logps, old = _sequence_inputs()
    loss, stats = clipped_policy_loss(logps, old, SEQ_ADVANTAGES, SEQ_MASK, level="sequence")
    s1 = math.exp(-0.2)
    # row 0: -min(1.2214, 1.2) = -1.2; row 1: -min(-s, -0.8) = s = 0.818731; row 2: max(0.7408, 0.8) = 0.8
    expected = _f64([[-1.2, -1.2, 0.0], [s1] * 3, [0.8, 0.8, 0.0]])
    torch.testing.assert_close(loss, expected)
    assert stats.clipped_high.tolist() == [[True, True, False], [False] * 3, [False] * 3]
    assert stats.clipped_low.tolist() == [[False] * 3, [False] * 3, [True, True, False]]
    torch.testing.assert_close(stats.ratio[0, :2], torch.full((2,), math.exp(0.2), dtype=torch.float64))
    # Per-token gradient of row 1 is -A * s = 0.818731 on each token; clipped rows have none.
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, _f64([[0.0] * 3, [s1] * 3, [0.0] * 3]))


def test_sequence_level_gradient_equals_gspo_objective():
    # GSPO as written: J = mean_i min(s_i A_i, clip(s_i) A_i) with s_i = exp(mean_t log-ratio),
    # differentiated through the mean; our per-token loss under sequence_mean must match it.
    torch.manual_seed(0)
    old = -torch.rand(4, 6, dtype=torch.float64) * 3
    logps = (old + torch.randn(4, 6, dtype=torch.float64) * 0.15).requires_grad_(True)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    advantages = _f64([1.0, -0.5, 2.0, -1.5])
    loss, _ = clipped_policy_loss(logps, old, advantages, mask, clip_low=0.05, clip_high=0.1, level="sequence")
    (ours,) = torch.autograd.grad(aggregate("sequence_mean", loss, mask).mean(), logps)
    weights = mask.to(torch.float64)
    s = torch.exp(((logps - old) * weights).sum(-1) / weights.sum(-1))
    paper = -torch.minimum(s * advantages, s.clamp(0.95, 1.1) * advantages).mean()
    (theirs,) = torch.autograd.grad(paper, logps)
    torch.testing.assert_close(ours, theirs)
    assert theirs.abs().sum() > 0


def _tiny_policy_logps(dtype=torch.float64):
    """Log-probs ``(B, T)`` of fixed labels under a linear 'model' W: (H, V), so gradients
    reach a real parameter through log-softmax."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 5, generator=generator, dtype=dtype)
    weight = torch.randn(5, 7, generator=generator, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, 7, (4, 6), generator=generator)
    logps = torch.log_softmax(hidden @ weight, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return weight, logps


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("per_token_advantages", [False, True])
def test_one_pass_gradient_equals_reinforce(mode, level, per_token_advantages):
    """Issue 7 must-show 2: with old log-probs = current log-probs detached (one pass per
    rollout), the clipped loss has the gradient of -(A * log pi), aggregated the same way."""
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]])
    advantages = _f64([1.5, -0.7, 0.3, -2.0])
    if per_token_advantages:
        advantages = advantages[:, None] * torch.linspace(0.5, -1.0, 6, dtype=torch.float64)
    per_token_a = advantages if per_token_advantages else advantages[:, None]

    weight, logps = _tiny_policy_logps()
    clipped, stats = clipped_policy_loss(
        logps, logps.detach(), advantages, mask, clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0, level=level
    )
    clipped_total = aggregate(mode, clipped, mask, max_len=6).mean()
    (clipped_grad,) = torch.autograd.grad(clipped_total, weight)

    weight, logps = _tiny_policy_logps()
    reinforce_total = aggregate(mode, -(per_token_a * logps), mask, max_len=6).mean()
    (reinforce_grad,) = torch.autograd.grad(reinforce_total, weight)

    torch.testing.assert_close(clipped_grad, reinforce_grad, rtol=1e-12, atol=1e-12)
    assert reinforce_grad.abs().sum() > 0
    # the loss value is -A (ratio 1), not -A log pi
    torch.testing.assert_close(clipped, torch.where(mask > 0, -per_token_a.expand(4, 6), 0.0))
    assert not (stats.clipped_low | stats.clipped_high | stats.clipped_dual).any()


def test_policy_loss_errors():
    logps, old = _logps()
    with pytest.raises(ValueError, match=r"advantages must be \(B,\) or \(B, T\)"):
        clipped_policy_loss(logps, old, torch.ones(3), MASK)
    with pytest.raises(ValueError, match="clip_low must be in"):
        clipped_policy_loss(logps, old, ADVANTAGES, MASK, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        clipped_policy_loss(logps, old, ADVANTAGES, MASK, clip_ratio_c=0.9)
    with pytest.raises(ValueError, match="one shape"):
        clipped_policy_loss(logps, old[:, :3], ADVANTAGES, MASK)


# Value loss, T = 3, row 1 ragged (its padding holds values that must not count).
VALUES = _f64([[1.0, 0.5, 2.0], [-1.0, 3.0, 99.0]])
OLD_VALUES = _f64([[0.5, 0.5, 1.0], [0.0, 3.5, -99.0]])
RETURNS = _f64([[1.2, 0.0, 1.0], [0.0, 2.9, 50.0]])
VALUE_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_reinforce_hand_values():
    # row 0: A = 2 on log-probs -1, -2 (both trained); row 1: A = -1 on -0.5 and a pad of 50
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 50.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -2.5], [-0.5, 0.0]], dtype=torch.float64)
    loss, stats = reinforce_policy_loss(logps, old, torch.tensor([2.0, -1.0]), torch.tensor([[1, 1], [1, 0]]))
    # -A * log pi: (2, 4) and (-0.5, 0 outside the mask)
    torch.testing.assert_close(loss.detach(), _f64([[2.0, 4.0], [-0.5, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, _f64([[-2.0, -2.0], [1.0, 0.0]]))  # -A on trained tokens
    # ratio exp(log pi - log pi_old): 1, e^0.5, 1, and 1 outside the mask; nothing is clipped
    torch.testing.assert_close(stats.ratio, _f64([[1.0, math.exp(0.5)], [1.0, 1.0]]))
    assert not (stats.clipped_low.any() or stats.clipped_high.any() or stats.clipped_dual.any())


def test_clipped_value_loss_hand_values():
    values = VALUES.clone().requires_grad_(True)
    loss, clipped = clipped_value_loss(values, OLD_VALUES, RETURNS, VALUE_MASK, clip_range=0.2)
    # moved = old + clamp(V - old, -0.2, 0.2); loss = 0.5 * max((V - R)^2, (moved - R)^2)
    # (0,0): (1 - 1.2)^2 = 0.04;  moved 0.7: (0.7 - 1.2)^2 = 0.25 -> 0.125, clipped (grad 0)
    # (0,1): V = old: 0.25 both -> 0.125, not clipped (grad V - R = 0.5)
    # (0,2): (2 - 1)^2 = 1;      moved 1.2: 0.04 -> 0.5 (grad 1.0)
    # (1,0): (-1 - 0)^2 = 1;     moved -0.2: 0.04 -> 0.5 (grad -1.0)
    # (1,1): (3 - 2.9)^2 = 0.01; moved 3.3: 0.16 -> 0.08, clipped (grad 0)
    # (1,2): padding -> 0
    torch.testing.assert_close(loss, _f64([[0.125, 0.125, 0.5], [0.5, 0.08, 0.0]]))
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    loss.sum().backward()
    torch.testing.assert_close(values.grad, _f64([[0.0, 0.5, 1.0], [-1.0, 0.0, 0.0]]))


def test_unclipped_value_loss_and_errors():
    loss, clipped = clipped_value_loss(VALUES, OLD_VALUES, RETURNS, VALUE_MASK, clip_range=None)
    # 0.5 * (V - R)^2: 0.5 * (0.04, 0.25, 1), 0.5 * (1, 0.01), padding 0
    torch.testing.assert_close(loss, _f64([[0.02, 0.125, 0.5], [0.5, 0.005, 0.0]]))
    assert not clipped.any()
    with pytest.raises(ValueError, match="clip_range"):
        clipped_value_loss(VALUES, OLD_VALUES, RETURNS, VALUE_MASK, clip_range=0.0)
    with pytest.raises(ValueError, match="one shape"):
        clipped_value_loss(VALUES, OLD_VALUES, RETURNS[:, :2], VALUE_MASK, clip_range=0.2)


def test_explained_variance_hand_values():
    # masked returns (1, 2, 3), values (1, 2, 2): Var[R] = (1 + 0 + 1) / 3 = 2/3;
    # R - V = (0, 0, 1): mean 1/3, Var = (1/9 + 1/9 + 4/9) / 3 = 2/9; EV = 1 - (2/9)/(2/3) = 2/3
    returns = torch.tensor([[1.0, 2.0, 7.0], [3.0, -5.0, 8.0]])
    values = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(2 / 3)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)  # perfect critic
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)  # the mean
    assert explained_variance(values, torch.full_like(returns, 3.0), mask).isnan()  # undefined
