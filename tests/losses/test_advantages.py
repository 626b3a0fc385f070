"""Group-relative, leave-one-out and GAE advantages, and whitening, against hand-derived numbers."""

import math
import threading

import pytest
import torch

from posttrain.losses.advantages import (
    ADVANTAGE_SCALES,
    gae,
    group_relative_advantages,
    leave_one_out_advantages,
    whiten_advantages,
)

# Two prompts x G = 3: group 0 varies, group 1 is all-equal.
REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])


def test_group_scale_hand_values():
    # group 0: mean 2, deviations (-1, 0, 1), sample variance (1 + 0 + 1) / (3 - 1) = 1, std 1
    # group 1: all 0 -> 0 (std 0 is never divided by)
    advantages = group_relative_advantages(REWARDS, 3, scale="group")
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    # group (0, 0, 1, 1) with G = 4: mean 0.5, deviations +-0.5, sample variance 4 * 0.25 / 3 = 1/3,
    # so +-0.5 * sqrt(3) = +-0.866025
    four = group_relative_advantages(torch.tensor([0.0, 0.0, 1.0, 1.0]), 4)
    half_root3 = 0.5 * math.sqrt(3.0)
    torch.testing.assert_close(four, torch.tensor([-half_root3, -half_root3, half_root3, half_root3]))


def test_batch_and_none_scale_hand_values():
    # batch: all six rewards have mean 1, deviations (0, 1, 2, -1, -1, -1), squares sum to 8,
    # sample variance 8 / 5 = 1.6; group 0's centred (-1, 0, 1) / sqrt(1.6) = +-0.790569
    batch = group_relative_advantages(REWARDS, 3, scale="batch")
    s = 1.0 / math.sqrt(1.6)
    torch.testing.assert_close(batch, torch.tensor([-s, 0.0, s, 0.0, 0.0, 0.0]))
    assert s == pytest.approx(0.790569, abs=1e-6)
    # none (Dr. GRPO): r - mean only
    torch.testing.assert_close(
        group_relative_advantages(REWARDS * 10, 3, scale="none"), torch.tensor([-10.0, 0.0, 10.0, 0.0, 0.0, 0.0])
    )


@pytest.mark.parametrize("scale", sorted(ADVANTAGE_SCALES))
def test_equal_reward_groups_are_exactly_zero(scale):
    # In float32 the mean of (0.9, 0.9, 0.9) is not 0.9: a naive r - mean is ~6e-8 with a std of
    # ~7e-8, so (r - mean) / std would be O(1) noise. A whole batch of equal rewards has std 0.
    equal = torch.full((6,), 0.9)
    grouped = equal.reshape(2, 3)
    assert (grouped - grouped.mean(dim=1, keepdim=True)).abs().max() > 0  # the trap is real
    out = group_relative_advantages(equal, 3, scale=scale)
    assert torch.equal(out, torch.zeros(6)) and not out.isnan().any()
    mixed = torch.tensor([0.9, 0.9, 0.9, 0.0, 1.0, 0.0])
    assert torch.equal(group_relative_advantages(mixed, 3, scale=scale)[:3], torch.zeros(3))
    assert torch.equal(leave_one_out_advantages(equal, 3), torch.zeros(6))


def test_leave_one_out_hand_values():
    # group (1, 2, 6): 1 - (2 + 6)/2 = -3; 2 - (1 + 6)/2 = -1.5; 6 - (1 + 2)/2 = 4.5
    # group (5, 5, 5): 0. Also = G/(G-1) * (r - mean) = 1.5 * (-2, -1, 3).
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    torch.testing.assert_close(leave_one_out_advantages(rewards, 3), torch.tensor([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]))
    # G = 2: each is compared with the other one: (4 - 1, 1 - 4)
    torch.testing.assert_close(leave_one_out_advantages(torch.tensor([4.0, 1.0]), 2), torch.tensor([3.0, -3.0]))


def test_group_advantage_errors():
    with pytest.raises(ValueError, match="group_size .* >= 2, got 1"):
        leave_one_out_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="group_size .* >= 2, got 1"):
        group_relative_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="not a multiple of group_size 4"):
        group_relative_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        group_relative_advantages(REWARDS, 3, scale="std")
    with pytest.raises(ValueError, match="1-D"):
        group_relative_advantages(REWARDS.reshape(2, 3), 3)
    with pytest.raises(ValueError, match=r"finite; rows \[1\]"):
        group_relative_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), 2)


# Two completions, T = 3; the second has 2 real tokens and padding whose huge numbers must not leak.
GAE_REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 100.0]])
GAE_VALUES = torch.tensor([[0.5, 0.4, 0.6], [0.2, -0.3, 100.0]])
GAE_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_gae_hand_values_on_ragged_rows():
    advantages, returns = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=0.5)
    # gamma * lam = 0.45; the value after each row's last real token is 0.
    # row 0: t=2 delta = 1 + 0 - 0.6 = 0.4;                A2 = 0.4
    #        t=1 delta = 0 + 0.9*0.6 - 0.4 = 0.14;         A1 = 0.14 + 0.45*0.4 = 0.32
    #        t=0 delta = 0 + 0.9*0.4 - 0.5 = -0.14;        A0 = -0.14 + 0.45*0.32 = 0.004
    # row 1: t=1 delta = -1 + 0 - (-0.3) = -0.7;          A1 = -0.7
    #        t=0 delta = 0.5 + 0.9*(-0.3) - 0.2 = 0.03;    A0 = 0.03 + 0.45*(-0.7) = -0.285
    expected = torch.tensor([[0.004, 0.32, 0.4], [-0.285, -0.7, 0.0]])
    torch.testing.assert_close(advantages, expected)
    # returns = A + V inside the mask: (0.504, 0.72, 1.0), (-0.085, -1.0), padding 0
    torch.testing.assert_close(returns, torch.tensor([[0.504, 0.72, 1.0], [-0.085, -1.0, 0.0]]))
    assert not advantages.requires_grad


def test_gae_limits_monte_carlo_and_td():
    # lam = gamma = 1: A_t = (sum of rewards from t) - V_t; row 0: 1 - (0.5, 0.4, 0.6); row 1:
    # (0.5 - 1, -1) - (0.2, -0.3) = (-0.7, -0.7)
    mc, _ = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(mc, torch.tensor([[0.5, 0.6, 0.4], [-0.7, -0.7, 0.0]]))
    # lam = 0: A_t = delta_t (from the test above, gamma = 0.9)
    td, _ = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=0.0)
    torch.testing.assert_close(td, torch.tensor([[-0.14, 0.14, 0.4], [0.03, -0.7, 0.0]]))


def test_gae_skips_interior_holes_and_empty_rows():
    # A masked position inside a row is skipped: token 0 bootstraps from token 2.
    rewards = torch.tensor([[0.0, 50.0, 1.0], [3.0, 3.0, 3.0]])
    values = torch.tensor([[0.5, -50.0, 0.6], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=2: A = 1 - 0.6 = 0.4; t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04, A = 0.04 + 0.45*0.4 = 0.22
    torch.testing.assert_close(advantages, torch.tensor([[0.22, 0.0, 0.4], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.72, 0.0, 1.0], [0.0, 0.0, 0.0]]))


def test_gae_errors_and_dtype():
    with pytest.raises(ValueError, match="lam must be in"):
        gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=1.5)
    with pytest.raises(ValueError, match="one shape"):
        gae(GAE_REWARDS, GAE_VALUES[:, :2], GAE_MASK, gamma=0.9, lam=0.5)
    advantages, _ = gae(GAE_REWARDS.bfloat16(), GAE_VALUES.bfloat16(), GAE_MASK, gamma=0.9, lam=0.5)
    assert advantages.dtype == torch.float32


def test_whiten_advantages_on_ragged_mask():
    advantages = torch.tensor([[1.0, 2.0, 40.0], [3.0, -40.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # masked values (1, 2, 3): mean 2, sample variance (1 + 0 + 1) / 2 = 1 -> (x - 2) / 1
    out = whiten_advantages(advantages, mask, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert not out.requires_grad
    # shift_mean=False keeps the mean: (x - 2) / 1 + 2 = x
    kept = whiten_advantages(advantages, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept, torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))
    # the padding values do not matter
    other = advantages.detach().clone()
    other[0, 2], other[1, 1:] = -1e6, 1e6
    torch.testing.assert_close(whiten_advantages(other, mask, eps=0.0), out)


def test_whitening_across_processes_equals_whitening_everything():
    """Two 'processes' (threads) whiten their halves with an all-reduce of the sums: the result
    is the whitening of the whole batch, not of each half."""
    values = torch.tensor([[1.0, -2.0, 0.5, 9.0], [3.0, 0.0, -1.0, 9.0], [2.5, 4.0, 0.0, 0.0], [-3.0, 1.0, 2.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def run(rank):
        def all_reduce(tensor):
            slots[rank] = tensor.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        results[rank] = whiten_advantages(values[2 * rank : 2 * rank + 2], mask[2 * rank : 2 * rank + 2], all_reduce=all_reduce)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whole = whiten_advantages(values, mask)
    torch.testing.assert_close(torch.cat(results), whole)
    assert not torch.allclose(results[0], whiten_advantages(values[:2], mask[:2]))
