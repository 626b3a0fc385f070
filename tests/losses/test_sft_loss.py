"""SFT token loss and the reductions in posttrain.losses.reduce."""

import pytest
import torch

from posttrain.losses.reduce import AGGREGATIONS, aggregate, sum_and_count
from posttrain.losses.sft import token_nll


def test_token_nll_hand_values():
    logps = torch.tensor([[-0.5, -1.0, -2.0], [-3.0, -0.25, -4.0]])
    weights = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0]])
    # -logp * w: [[0.5*0, 1.0*1, 2.0*0.5], [3*1, 0.25*1, 4*0]]
    expected = torch.tensor([[0.0, 1.0, 1.0], [3.0, 0.25, 0.0]])
    torch.testing.assert_close(token_nll(logps, weights), expected)
    torch.testing.assert_close(token_nll(logps, weights > 0), torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.25, 0.0]]))


def test_sum_and_count():
    losses = torch.tensor([[1.0, 1.0, 2.0], [3.0, 0.25, 0.0]])
    weights = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0]])
    # total = 1*1 + 2*0.5 + 3*1 + 0.25*1 = 5.25; count = 0 + 1 + 0.5 + 1 + 1 + 0 = 3.5
    result = sum_and_count(losses, weights)
    assert result.total.item() == 5.25 and result.count.item() == 3.5
    assert result.mean().item() == pytest.approx(1.5)
    unweighted = sum_and_count(torch.tensor([0.5, 1.5, 4.0]))
    assert unweighted.total.item() == 6.0 and unweighted.count.item() == 3.0


LOSSES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_aggregation_modes_hand_values():
    # token_mean: (1+2+3+4+10+20) / 6 tokens = 40 / 6
    token = aggregate("token_mean", LOSSES, MASK)
    assert (token.total.item(), token.count.item()) == (40.0, 6.0)
    # sequence_mean: row means 10/4 = 2.5 and 30/2 = 15; the empty third row is not a unit.
    sequence = aggregate("sequence_mean", LOSSES, MASK)
    assert (sequence.total.item(), sequence.count.item()) == (17.5, 2.0)
    assert sequence.mean().item() == 8.75
    # Dr. GRPO: 40 / (3 sequences * max_len 8) -> total 40 / 8 = 5 over 3 units.
    constant = aggregate("sequence_sum_over_constant", LOSSES, MASK, max_len=8)
    assert (constant.total.item(), constant.count.item()) == (5.0, 3.0)
    assert constant.mean().item() == pytest.approx(40 / 24)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_micro_batch_sums_over_global_count_equal_full_batch(name):
    torch.manual_seed(0)
    losses = torch.rand(8, 6)
    mask = torch.rand(8, 6) > 0.3
    mask[:, 0] = True
    full = aggregate(name, losses, mask, max_len=6).mean()
    parts = [aggregate(name, losses[i : i + 2], mask[i : i + 2], max_len=6) for i in range(0, 8, 2)]
    accumulated = sum(p.total for p in parts) / sum(p.count for p in parts)
    torch.testing.assert_close(accumulated, full)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="valid: sequence_mean, sequence_sum_over_constant, token_mean"):
        aggregate("mean", LOSSES, MASK)
    with pytest.raises(ValueError, match="max_len"):
        aggregate("sequence_sum_over_constant", LOSSES, MASK)
