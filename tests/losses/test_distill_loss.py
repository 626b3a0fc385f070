"""Distillation divergences: hand-derived values, the teacher == student invariant, analytic
gradients, top-k, and the chunked computation against the direct one."""

import math

import pytest
import torch
from torch import nn

from posttrain.losses.distill import (
    DivergenceOptions,
    chunked_divergence,
    divergence_from_logits,
    forward_kl,
    generalized_jsd,
    reverse_kl,
)
from posttrain.testing import assert_close_to_scale, assert_tensors_close_to_scale

# Two-token distributions: student logits (0, ln 3) give S = (1/4, 3/4); teacher logits (0, 0)
# give T = (1/2, 1/2).
STUDENT = torch.tensor([[0.0, math.log(3.0)]])
TEACHER = torch.tensor([[0.0, 0.0]])


def test_forward_kl_hand_value():
    # KL(T || S) = 1/2 ln((1/2)/(1/4)) + 1/2 ln((1/2)/(3/4)) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    assert forward_kl(STUDENT, TEACHER).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_reverse_kl_hand_value():
    # KL(S || T) = 1/4 ln((1/4)/(1/2)) + 3/4 ln((3/4)/(1/2)) = -1/4 ln 2 + 3/4 ln(3/2)
    expected = -0.25 * math.log(2) + 0.75 * math.log(1.5)
    assert reverse_kl(STUDENT, TEACHER).item() == pytest.approx(expected, abs=1e-6)


def test_jsd_hand_value():
    # beta = 1/2: M = (3/8, 5/8).
    # KL(T || M) = 1/2 ln((1/2)/(3/8)) + 1/2 ln((1/2)/(5/8)) = 1/2 ln(4/3) + 1/2 ln(4/5)
    # KL(S || M) = 1/4 ln((1/4)/(3/8)) + 3/4 ln((3/4)/(5/8)) = 1/4 ln(2/3) + 3/4 ln(6/5)
    kl_t = 0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)
    kl_s = 0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5)
    assert generalized_jsd(STUDENT, TEACHER, beta=0.5).item() == pytest.approx(0.5 * kl_t + 0.5 * kl_s, abs=1e-6)


def test_jsd_with_unequal_beta_hand_value():
    # beta = 1/4: M = 1/4 T + 3/4 S = (1/8 + 3/16, 1/8 + 9/16) = (5/16, 11/16).
    m = (5 / 16, 11 / 16)
    kl_t = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_s = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert generalized_jsd(STUDENT, TEACHER, beta=0.25).item() == pytest.approx(0.25 * kl_t + 0.75 * kl_s, abs=1e-6)


def test_temperature_divides_both_logits():
    # At tau = 2 the student's logits are (0, ln(3)/2): S = (1, sqrt 3) / (1 + sqrt 3); T stays uniform.
    root = math.sqrt(3.0)
    s = (1 / (1 + root), root / (1 + root))
    expected = 0.5 * math.log(0.5 / s[0]) + 0.5 * math.log(0.5 / s[1])
    assert forward_kl(STUDENT, TEACHER, temperature=2.0).item() == pytest.approx(expected, abs=1e-6)
    # The teacher is divided too: doubling both logits at tau = 2 gives the tau = 1 value.
    assert forward_kl(2 * STUDENT, 2 * TEACHER + 1.0, temperature=2.0).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


# Teacher top-k on three tokens: T = (0.5, 0.3, 0.2), S = (0.2, 0.3, 0.5); k = 2 keeps tokens 0
# and 1 of the teacher, renormalised: T_2 = (5/8, 3/8, 0).
TEACHER3 = torch.tensor([[0.5, 0.3, 0.2]]).log()
STUDENT3 = torch.tensor([[0.2, 0.3, 0.5]]).log()


def test_top_k_forward_kl_hand_value():
    # The student keeps its whole distribution: KL(T_2 || S) = 5/8 ln((5/8)/0.2) + 3/8 ln((3/8)/0.3)
    expected = 0.625 * math.log(0.625 / 0.2) + 0.375 * math.log(0.375 / 0.3)
    assert forward_kl(STUDENT3, TEACHER3, teacher_top_k=2).item() == pytest.approx(expected, abs=1e-6)


def test_top_k_reverse_kl_restricts_the_student():
    # S restricted to tokens 0, 1 and renormalised: S_2 = (0.4, 0.6).
    expected = 0.4 * math.log(0.4 / 0.625) + 0.6 * math.log(0.6 / 0.375)
    assert reverse_kl(STUDENT3, TEACHER3, teacher_top_k=2).item() == pytest.approx(expected, abs=1e-6)


def test_top_k_jsd_hand_value():
    # M = (T_2 + S) / 2 = (0.4125, 0.3375, 0.25); the teacher's term has no token 2.
    m = (0.4125, 0.3375, 0.25)
    kl_t = 0.625 * math.log(0.625 / m[0]) + 0.375 * math.log(0.375 / m[1])
    kl_s = 0.2 * math.log(0.2 / m[0]) + 0.3 * math.log(0.3 / m[1]) + 0.5 * math.log(0.5 / m[2])
    assert generalized_jsd(STUDENT3, TEACHER3, beta=0.5, teacher_top_k=2).item() == pytest.approx(0.5 * kl_t + 0.5 * kl_s, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_top_k_gradients_are_finite_and_k_equal_to_vocab_is_exact(beta):
    torch.manual_seed(0)
    student = torch.randn(6, 9, requires_grad=True)
    teacher = torch.randn(6, 9)
    divergence_from_logits(student, teacher, beta=beta, teacher_top_k=3).divergence.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    full = divergence_from_logits(student, teacher, beta=beta).divergence
    assert torch.equal(divergence_from_logits(student, teacher, beta=beta, teacher_top_k=9).divergence, full)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_equal_to_student_gives_zero_and_zero_gradient(beta, temperature):
    torch.manual_seed(1)
    logits = torch.randn(5, 17) * 3
    student = logits.clone().requires_grad_(True)
    divergence = divergence_from_logits(student, logits, beta=beta, temperature=temperature).divergence
    divergence.sum().backward()
    # Both are sums of p * (log p - log p) terms, exactly 0 up to the rounding of two equal
    # log-softmaxes (the same operations: exactly equal here); the gradient is S - T = 0.
    assert divergence.abs().max().item() <= 1e-6
    assert student.grad.abs().max().item() <= 1e-6


def test_forward_kl_gradient_is_student_minus_teacher():
    # d/dz_s KL(T || S) = S - T (the cross-entropy gradient with soft targets).
    torch.manual_seed(2)
    student = torch.randn(4, 11, requires_grad=True)
    teacher = torch.randn(4, 11)
    forward_kl(student, teacher).sum().backward()
    expected = torch.softmax(student.detach(), -1) - torch.softmax(teacher, -1)
    assert_close_to_scale(student.grad, expected)


def test_reverse_kl_gradient_hand_formula():
    # d/dz_j sum_v S_v (log S_v - log T_v) = S_j (log S_j - log T_j - KL(S || T)).
    torch.manual_seed(3)
    student = torch.randn(4, 11, requires_grad=True)
    teacher = torch.randn(4, 11)
    kl = reverse_kl(student, teacher)
    kl.sum().backward()
    log_s, log_t = torch.log_softmax(student.detach(), -1), torch.log_softmax(teacher, -1)
    expected = log_s.exp() * (log_s - log_t - kl.detach().unsqueeze(-1))
    assert_close_to_scale(student.grad, expected)


def test_jsd_tends_to_scaled_kls_at_the_ends():
    # JSD_beta ~ beta KL(T || S) as beta -> 0 and ~ (1 - beta) KL(S || T) as beta -> 1.
    torch.manual_seed(4)
    student, teacher = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    eps = 1e-5
    torch.testing.assert_close(generalized_jsd(student, teacher, beta=eps) / eps, forward_kl(student, teacher), rtol=1e-3, atol=0)
    torch.testing.assert_close(generalized_jsd(student, teacher, beta=1 - eps) / eps, reverse_kl(student, teacher), rtol=1e-3, atol=0)
    # The symmetric JSD is bounded by ln 2.
    assert (generalized_jsd(student * 50, teacher * 50, beta=0.5) <= math.log(2) + 1e-12).all()


def test_stats_entropies_and_agreement():
    stats = divergence_from_logits(STUDENT3, TEACHER3, beta=0.5, with_stats=True)
    # H(S) = -(0.2 ln 0.2 + 0.3 ln 0.3 + 0.5 ln 0.5), the same numbers for H(T); argmaxes 2 and 0.
    entropy = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))
    assert stats.student_entropy.item() == pytest.approx(entropy, abs=1e-6)
    assert stats.teacher_entropy.item() == pytest.approx(entropy, abs=1e-6)
    assert stats.agreement.tolist() == [False]
    assert divergence_from_logits(STUDENT3, STUDENT3 + 1, beta=0.5, with_stats=True).agreement.tolist() == [True]


def test_half_precision_logits_are_upcast():
    torch.manual_seed(5)
    student, teacher = torch.randn(3, 50).bfloat16(), torch.randn(3, 50).bfloat16()
    out = divergence_from_logits(student, teacher, beta=0.5).divergence
    assert out.dtype == torch.float32
    assert_close_to_scale(out, divergence_from_logits(student.float(), teacher.float(), beta=0.5).divergence)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"beta": 1.5}, "beta must be in"),
        ({"beta": 0.5, "temperature": 0.0}, "temperature must be > 0"),
        ({"beta": 0.0, "teacher_top_k": 0}, "teacher_top_k must be"),
        ({"beta": 1.0, "teacher_top_k": 1}, "loss is always 0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        divergence_from_logits(STUDENT, TEACHER, **options)
    with pytest.raises(ValueError, match=message):
        DivergenceOptions(**options)


# ---------------------------------------------------------------------- chunked computation


def _setup(seed=0, positions=10, student_width=6, teacher_width=9, vocab=13, teacher_vocab=None):
    torch.manual_seed(seed)
    student_head = nn.Linear(student_width, vocab, bias=False)
    teacher_head = nn.Linear(teacher_width, teacher_vocab or vocab, bias=False).requires_grad_(False)
    student_states = (torch.randn(positions, student_width) * 2).requires_grad_(True)
    teacher_states = torch.randn(positions, teacher_width) * 2
    return student_head, teacher_head, student_states, teacher_states


def _run(student_head, teacher_head, student_states, teacher_states, options, chunk_size):
    student_head.zero_grad()
    student_states.grad = None
    stats = chunked_divergence(student_states, student_head, teacher_states, teacher_head, DivergenceOptions(**options), chunk_size=chunk_size, with_stats=True)
    # A weighted sum so every position gets a distinct upstream gradient.
    weights = torch.arange(1, stats.divergence.numel() + 1, dtype=torch.float32)
    (stats.divergence * weights).sum().backward()
    return stats, {"states": student_states.grad.clone(), "head": student_head.weight.grad.clone()}


@pytest.mark.parametrize("beta, top_k", [(0.0, None), (0.5, None), (1.0, None), (0.5, 4), (1.0, 4)])
@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_chunked_equals_direct_gradients_included(beta, top_k, chunk_size):
    parts = _setup()
    options = {"beta": beta, "temperature": 0.8, "teacher_top_k": top_k}
    chunked, chunked_grads = _run(*parts, options, chunk_size)
    direct, direct_grads = _run(*parts, options, None)
    # The naive computation: both models' full logits at once.
    student_head, teacher_head, student_states, teacher_states = parts
    naive = divergence_from_logits(student_head(student_states), teacher_head(teacher_states), with_stats=True, **options)
    for stats in (chunked, direct):
        assert_close_to_scale(stats.divergence, naive.divergence.detach())
        assert_close_to_scale(stats.student_entropy, naive.student_entropy)
        assert_close_to_scale(stats.teacher_entropy, naive.teacher_entropy)
        assert torch.equal(stats.agreement, naive.agreement)
    assert_tensors_close_to_scale(chunked_grads, direct_grads)
    assert not teacher_head.weight.requires_grad and teacher_head.weight.grad is None


def test_chunked_teacher_gets_no_gradient_even_when_trainable():
    student_head, teacher_head, student_states, teacher_states = _setup()
    teacher_head.requires_grad_(True)
    teacher_states.requires_grad_(True)
    stats = chunked_divergence(student_states, student_head, teacher_states, teacher_head, DivergenceOptions(0.5), chunk_size=3)
    stats.divergence.sum().backward()
    assert teacher_head.weight.grad is None and teacher_states.grad is None
    assert student_head.weight.grad.abs().sum() > 0


def test_vocab_size_drops_padding_rows_of_either_head():
    # A teacher head with 3 padding rows more than the student's: comparing the first 13 logits
    # equals comparing with the padding rows cut off the teacher's head.
    student_head, teacher_head, student_states, teacher_states = _setup(teacher_vocab=16)
    cut = nn.Linear(teacher_head.in_features, 13, bias=False)
    cut.weight.data.copy_(teacher_head.weight.data[:13])
    padded = chunked_divergence(student_states, student_head, teacher_states, teacher_head, DivergenceOptions(0.5), vocab_size=13, chunk_size=4)
    exact = chunked_divergence(student_states, student_head, teacher_states, cut, DivergenceOptions(0.5), chunk_size=4)
    assert torch.equal(padded.divergence, exact.divergence)
    with pytest.raises(ValueError, match="differ in shape"):
        chunked_divergence(student_states, student_head, teacher_states, teacher_head, DivergenceOptions(0.5))
