import math

import pytest
import torch
from torch import nn

from posttrain.ops import (
    auto_chunk_size,
    entropy_from_logits,
    masked_mean,
    masked_sum,
    selective_log_softmax,
    token_logps,
    whiten,
)
from posttrain.testing import assert_close_to_scale


def _reference_logps(logits, index):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


def test_selective_log_softmax_matches_log_softmax_float32():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    index = torch.randint(0, 11, (3, 5))
    out = selective_log_softmax(logits, index)
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    assert_close_to_scale(out, _reference_logps(logits, index))


def test_selective_log_softmax_upcasts_bf16():
    torch.manual_seed(0)
    logits = (torch.randn(4, 7, 300) * 6).bfloat16()
    index = torch.randint(0, 300, (4, 7))
    out = selective_log_softmax(logits, index)
    assert out.dtype == torch.float32
    # Same bf16 inputs, exact float32 arithmetic: agreement far below bf16 resolution (~1e-2).
    assert_close_to_scale(out, _reference_logps(logits, index))


def test_selective_log_softmax_hand_value():
    # logits (0, ln 3): p = (1/4, 3/4), so log p[1] = ln 0.75 = -0.28768...
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert selective_log_softmax(logits, torch.tensor([1])).item() == pytest.approx(math.log(0.75), abs=1e-6)


def test_entropy_of_uniform_is_log_vocab():
    # Uniform over V: H = -sum (1/V) log(1/V) = log V; any constant logit row is uniform.
    logits = torch.full((2, 3, 50), 1.7)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(50)))


def test_entropy_two_point_hand_value():
    # p = (1/4, 3/4): H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.34657 + 0.21576 = 0.56233
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    value = entropy_from_logits(torch.tensor([0.0, math.log(3.0)]))
    assert value.item() == pytest.approx(expected, abs=1e-6)


def _head_and_inputs(bias: bool, batch=3, length=5, hidden=8, vocab=13, seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=bias)
    states = torch.randn(batch, length, hidden, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length))
    return head, states, labels


def _grads(head, states, labels, chunk_size, temperature=1.0):
    head.zero_grad()
    states.grad = None
    stats = token_logps(states, head, labels, chunk_size=chunk_size, temperature=temperature, with_stats=True)
    # A weighted sum so every position gets a distinct upstream gradient.
    weights = torch.arange(1, labels.numel() + 1, dtype=torch.float32).reshape(labels.shape)
    (stats.logps * weights).sum().backward()
    grads = [states.grad.clone(), head.weight.grad.clone()]
    if head.bias is not None:
        grads.append(head.bias.grad.clone())
    return stats, grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 14, 15, 100])
def test_chunked_token_logps_and_gradients_equal_direct(bias, chunk_size):
    # B*T = 15 tokens: 4 and 7 do not divide 15; 15 and 100 take the direct path.
    head, states, labels = _head_and_inputs(bias)
    direct, direct_grads = _grads(head, states, labels, None)
    chunked, chunked_grads = _grads(head, states, labels, chunk_size)
    assert_close_to_scale(chunked.logps, direct.logps)
    assert_close_to_scale(chunked.entropy, direct.entropy)
    assert torch.equal(chunked.argmax_correct, direct.argmax_correct)
    for got, want in zip(chunked_grads, direct_grads):
        assert_close_to_scale(got, want)


def test_token_logps_matches_log_softmax_and_temperature():
    head, states, labels = _head_and_inputs(bias=True)
    with torch.no_grad():
        logits = head(states)
    for temperature in (1.0, 0.7):
        stats = token_logps(states, head, labels, chunk_size=4, temperature=temperature, with_stats=True)
        scaled = logits / temperature
        assert_close_to_scale(stats.logps, _reference_logps(scaled, labels))
        probs = torch.softmax(scaled, dim=-1)
        assert_close_to_scale(stats.entropy, -(probs * probs.log()).sum(-1))
        assert torch.equal(stats.argmax_correct, scaled.argmax(-1) == labels)
        assert not stats.entropy.requires_grad and stats.argmax_correct.dtype == torch.bool


def test_token_logps_temperature_hand_value():
    # Identity head: hidden are the logits (0, ln 3). At T=0.5 they become (0, 2 ln 3), so
    # p = (1, 9) / 10 and log p[0] = ln 0.1 = -2.302585.
    hidden = torch.tensor([[[0.0, math.log(3.0)]]])
    stats = token_logps(hidden, nn.Identity(), torch.tensor([[0]]), temperature=0.5)
    assert stats.logps.item() == pytest.approx(math.log(0.1), abs=1e-6)
    assert stats.entropy is None and stats.argmax_correct is None


def test_token_logps_ignore_index_gives_zero():
    head, states, labels = _head_and_inputs(bias=False)
    labels[0, 2] = -100
    stats = token_logps(states, head, labels, chunk_size=4, with_stats=True)
    assert stats.logps[0, 2].item() == 0.0
    assert not stats.argmax_correct[0, 2]
    assert torch.all(stats.logps[labels >= 0] < 0)


def test_token_logps_bf16_head_returns_float32():
    head, states, labels = _head_and_inputs(bias=False)
    head = head.bfloat16()
    stats = token_logps(states.detach().bfloat16(), head, labels, chunk_size=4)
    assert stats.logps.dtype == torch.float32
    with torch.no_grad():
        want = _reference_logps(head(states.bfloat16()), labels)
    assert_close_to_scale(stats.logps, want)


def test_token_logps_rejects_bad_chunk_size():
    head, states, labels = _head_and_inputs(bias=False)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logps(states, head, labels, chunk_size=0)


def test_auto_chunk_size_rule():
    assert auto_chunk_size(100, 1000, budget_elements=100_000) is None  # 1e5 elements fit exactly
    assert auto_chunk_size(101, 1000, budget_elements=100_000) == 100  # 100_000 // 1000
    assert auto_chunk_size(10, 10**6, budget_elements=1000) == 1  # never below one token
    assert auto_chunk_size(8192, 151_646) == 2**26 // 151_646 == 442


def test_masked_sum_and_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    # all: (1 + 2) / 2 = 1.5; per row: [1.5, 0 (empty row)]
    assert masked_sum(values, mask).item() == 3.0
    assert masked_mean(values, mask).item() == 1.5
    torch.testing.assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.5, 0.0]))
    weights = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.0, 2.0]])
    # (0.5*1 + 1*2 + 2*6) / 3.5 = 14.5 / 3.5
    assert masked_mean(values, weights).item() == pytest.approx(14.5 / 3.5)
    torch.testing.assert_close(masked_sum(values, weights, dim=0), torch.tensor([0.5, 2.0, 12.0]))


def test_whiten_hand_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # masked mean 2, unbiased variance ((1)^2 + 0 + 1^2) / (3 - 1) = 1, so (x - 2) / 1.
    torch.testing.assert_close(whiten(values, mask, eps=0.0), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False keeps the mean: (x - 2) / 1 + 2.
    torch.testing.assert_close(whiten(values, mask, shift_mean=False, eps=0.0), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    scaled = torch.tensor([[2.0, 4.0, 6.0, 0.0]])
    # mean 4, variance (4 + 0 + 4) / 2 = 4, std 2: (x - 4) / 2.
    torch.testing.assert_close(whiten(scaled, mask, eps=0.0), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        whiten(values, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
