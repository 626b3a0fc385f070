"""Distillation divergences between a student and a teacher's next-token distributions.

Per token, with ``S = softmax(z_s / tau)`` the student's and ``T = softmax(z_t / tau)`` the
teacher's distribution over the vocabulary at temperature ``tau``:

- forward KL ``KL(T || S) = sum_v T_v (log T_v - log S_v)``: mass-covering; the student is
  penalised wherever the teacher puts mass it does not (the classic distillation loss).
- reverse KL ``KL(S || T) = sum_v S_v (log S_v - log T_v)``: mode-seeking; the student is
  penalised for mass where the teacher has little, and may ignore some of the teacher's modes.
- generalized Jensen-Shannon with interpolation ``beta`` in (0, 1), as in GKD (Agarwal et al.
  2024, "On-Policy Distillation of Language Models"), with the mixture
  ``M = beta T + (1 - beta) S``::

      JSD_beta = beta KL(T || M) + (1 - beta) KL(S || M)

  ``beta = 0.5`` is the symmetric Jensen-Shannon divergence (at most ``log 2``). As ``beta -> 0``
  ``JSD_beta ~ beta KL(T || S)`` and as ``beta -> 1`` ``JSD_beta ~ (1 - beta) KL(S || T)``; the
  endpoints themselves are defined as the *unscaled* KLs (``beta = 0`` is the forward KL,
  ``beta = 1`` the reverse KL, GKD's and TRL's convention), so the loss scale jumps there: a
  learning rate tuned at ``beta = 0.5`` does not carry over to ``beta = 0`` or 1.

The temperature divides both models' logits; the loss is not multiplied by ``tau^2`` (Hinton et
al.'s correction for soft targets), following GKD.

Teacher top-k (``teacher_top_k = k``) replaces ``T`` by ``T_k``: the teacher's ``k`` most likely
tokens, renormalised, probability 0 elsewhere. Forward KL and the JSD are then computed exactly
against ``T_k`` (the student keeps its full distribution, so its mass outside the top k is still
penalised). The reverse KL ``KL(S || T_k)`` would be infinite whenever the student puts any
mass outside the top k, so with ``beta = 1`` the student is restricted to the same k tokens and
renormalised too (``KL(S_k || T_k)``, which needs ``k >= 2``: with one token both sides are 1
and the loss is 0). The error this makes is measured by ``benchmarks/distill_memory.py
--top-k-error`` and stated in the README.

Everything here takes logits ``(N, V)``: the caller runs the LM heads, in chunks of positions
(:func:`chunked_divergence`), so the ``(B, T, V)`` logits of both models never exist at once.
Imports only ``torch``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from posttrain.ops import auto_chunk_size

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class DivergenceStats(NamedTuple):
    """Per-token results of a divergence, all ``(N,)``.

    Attributes:
        divergence: float32, differentiable with respect to the student's logits.
        student_entropy, teacher_entropy: float32 entropies of ``S`` and ``T`` at the
            temperature, over the whole vocabulary (before any top-k), detached; None unless
            asked for.
        agreement: bool, whether the two models' most likely tokens are the same, detached;
            None unless asked for.
    """

    divergence: torch.Tensor
    student_entropy: torch.Tensor | None = None
    teacher_entropy: torch.Tensor | None = None
    agreement: torch.Tensor | None = None


@dataclass(frozen=True)
class DivergenceOptions:
    """Which divergence, at what temperature, against which teacher distribution (module
    docstring). Checked on construction (``ValueError`` naming the option)."""

    beta: float
    temperature: float = 1.0
    teacher_top_k: int | None = None

    def __post_init__(self):
        check_divergence_options(self.beta, self.temperature, self.teacher_top_k)


def check_divergence_options(beta: float, temperature: float, teacher_top_k: int | None) -> None:
    """Raise ``ValueError`` naming the option when ``beta``, ``temperature`` or
    ``teacher_top_k`` is out of range."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if teacher_top_k is not None:
        if teacher_top_k < 1:
            raise ValueError(f"teacher_top_k must be None or >= 1, got {teacher_top_k}")
        if beta == 1.0 and teacher_top_k < 2:
            raise ValueError("teacher_top_k=1 with beta=1 (reverse KL) compares two one-token distributions: the loss is always 0; use k >= 2")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    """``sum_v p_v (log p_v - log q_v)`` over the last dimension, ``(N, V) -> (N,)``.

    ``support`` (bool ``(N, V)``, or None for everywhere) marks where ``p`` may be nonzero; outside
    it both logs are ``-inf``, and the terms are set to 0 with finite stand-ins so that no
    ``0 * inf`` reaches the forward or the backward pass."""
    if support is not None:
        log_p = torch.where(support, log_p, 0.0)
        log_q = torch.where(support, log_q, 0.0)
        p = torch.where(support, log_p.exp(), 0.0)
    else:
        p = log_p.exp()
    return (p * (log_p - log_q)).sum(dim=-1)


def _log_softmax_on(logits: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    if support is None:
        return torch.log_softmax(logits, dim=-1)
    return torch.log_softmax(logits.masked_fill(~support, float("-inf")), dim=-1)


def divergence_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    with_stats: bool = False,
) -> DivergenceStats:
    """The per-token divergence of the student from the teacher (module docstring).

    Args:
        student_logits: ``(N, V)``, any float dtype (half precision is upcast to float32);
            the gradient flows into it.
        teacher_logits: ``(N, V)``, the same vocabulary; treated as a constant (detached).
        beta: 0 = forward KL ``KL(T || S)``, 1 = reverse KL ``KL(S || T)``, in between the
            generalized JSD.
        temperature: divides both models' logits.
        teacher_top_k: keep the teacher's ``k`` most likely tokens and renormalise; None keeps
            the whole distribution.
        with_stats: also return entropies and argmax agreement (no gradient).

    Returns:
        :class:`DivergenceStats` of ``(N,)`` tensors; the divergence is >= 0 (up to rounding),
        and exactly 0 with a zero gradient when the two logits are equal and ``teacher_top_k``
        is None.
    """
    check_divergence_options(beta, temperature, teacher_top_k)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
    student = student_logits.float() if student_logits.dtype in _LOW_PRECISION else student_logits
    teacher = teacher_logits.detach()
    teacher = teacher.float() if teacher.dtype in _LOW_PRECISION else teacher
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    support = None
    if teacher_top_k is not None and teacher_top_k < teacher.shape[-1]:
        top = teacher.topk(teacher_top_k, dim=-1).indices
        support = torch.zeros_like(teacher, dtype=torch.bool).scatter_(-1, top, True)
    log_t = _log_softmax_on(teacher, support)
    log_s = _log_softmax_on(student, support if beta == 1.0 else None)
    if beta == 0.0:
        divergence = _kl(log_t, log_s, support)
    elif beta == 1.0:
        divergence = _kl(log_s, log_t, support)
    else:
        # log M = logsumexp(log beta + log T, log(1 - beta) + log S), finite wherever S > 0.
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
        divergence = beta * _kl(log_t, log_m, support) + (1.0 - beta) * _kl(log_s, log_m, None)
    if not with_stats:
        return DivergenceStats(divergence)
    with torch.no_grad():
        # Computed last, as in posttrain.ops.logps_and_stats: a checkpointed recomputation in
        # backward stops before reaching it.
        full_s, full_t = torch.log_softmax(student.detach(), dim=-1), torch.log_softmax(teacher, dim=-1)
        student_entropy = -(full_s.exp() * full_s).sum(dim=-1)
        teacher_entropy = -(full_t.exp() * full_t).sum(dim=-1)
        agreement = student.argmax(dim=-1) == teacher.argmax(dim=-1)
    return DivergenceStats(divergence, student_entropy, teacher_entropy, agreement)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0, teacher_top_k: int | None = None) -> torch.Tensor:
    """``KL(T || S)`` per token, ``(N, V) -> (N,)``: :func:`divergence_from_logits` with ``beta=0``."""
    return divergence_from_logits(student_logits, teacher_logits, beta=0.0, temperature=temperature, teacher_top_k=teacher_top_k).divergence


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0, teacher_top_k: int | None = None) -> torch.Tensor:
    """``KL(S || T)`` per token, ``(N, V) -> (N,)``: :func:`divergence_from_logits` with ``beta=1``."""
    return divergence_from_logits(student_logits, teacher_logits, beta=1.0, temperature=temperature, teacher_top_k=teacher_top_k).divergence


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5, temperature: float = 1.0, teacher_top_k: int | None = None
) -> torch.Tensor:
    """``JSD_beta(T, S)`` per token, ``(N, V) -> (N,)`` (module docstring for the endpoints)."""
    return divergence_from_logits(student_logits, teacher_logits, beta=beta, temperature=temperature, teacher_top_k=teacher_top_k).divergence


def _chunk_divergence(
    student_states: torch.Tensor, teacher_states: torch.Tensor, student_head: nn.Module, teacher_head: nn.Module, vocab_size: int | None, options: dict
) -> DivergenceStats:
    """One chunk: both heads, then :func:`divergence_from_logits`. The teacher's head runs first
    and without gradient, so that only the student's part is differentiated."""
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_states)
    student_logits = student_head(student_states)
    if vocab_size is not None:
        student_logits, teacher_logits = student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]
    return divergence_from_logits(student_logits, teacher_logits, **options)


def chunked_divergence(
    student_states: torch.Tensor,
    student_head: nn.Module,
    teacher_states: torch.Tensor,
    teacher_head: nn.Module,
    options: DivergenceOptions,
    *,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    with_stats: bool = False,
) -> DivergenceStats:
    """The divergence at ``N`` positions from the two models' last hidden states, running both LM
    heads on ``chunk_size`` positions at a time.

    Args:
        student_states: ``(N, Hs)`` student hidden states (or logits with ``nn.Identity()`` as
            the head); the gradient flows into them and into ``student_head``.
        student_head, teacher_head: the output projections as modules (called, never read
            through ``.weight``, as in :func:`posttrain.ops.token_logps`).
        teacher_states: ``(N, Ht)`` teacher hidden states of the same positions (detached here;
            the teacher may be wider or narrower than the student).
        options: the divergence (:class:`DivergenceOptions`).
        vocab_size: compare only the first ``vocab_size`` logits of each head (the tokenizer's
            vocabulary: model families pad their embedding matrices to different multiples,
            e.g. 151,936 rows for a 0.5B Qwen2.5 and 152,064 for the 7B, and the padding rows
            are tokens no text contains). None compares all logits; the heads must then agree.
        chunk_size: positions per chunk. None picks one so that a chunk's two logits tensors
            hold at most 2**26 elements; a value ``>= N`` computes directly. Each chunk runs
            under non-reentrant activation checkpointing, so one chunk's ``(chunk, V)`` logits
            of each model exist at a time in the forward and in the backward pass (both heads
            are re-run in backward: two extra head matmuls per chunk, one of them the
            teacher's). Results and gradients equal the direct computation up to rounding.
        with_stats: as in :func:`divergence_from_logits`.

    Returns:
        :class:`DivergenceStats` of ``(N,)`` tensors.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be None or >= 1, got {chunk_size}")
    if student_states.shape[0] != teacher_states.shape[0]:
        raise ValueError(f"student states {tuple(student_states.shape)} and teacher states {tuple(teacher_states.shape)} cover different numbers of positions")
    keywords = {**asdict(options), "with_stats": with_stats}
    teacher_states = teacher_states.detach()
    num_positions = student_states.shape[0]
    if chunk_size is None:
        vocab = vocab_size or getattr(student_head, "out_features", None)
        chunk_size = auto_chunk_size(num_positions, vocab, budget_elements=2**25) if vocab else None
    if chunk_size is None or chunk_size >= num_positions:
        return _chunk_divergence(student_states, teacher_states, student_head, teacher_head, vocab_size, keywords)
    parts = [
        checkpoint(_chunk_divergence, s, t, student_head, teacher_head, vocab_size, keywords, use_reentrant=False)
        for s, t in zip(student_states.split(chunk_size), teacher_states.split(chunk_size))
    ]
    return DivergenceStats(*(None if parts[0][i] is None else torch.cat([part[i] for part in parts]) for i in range(4)))
