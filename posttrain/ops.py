"""Tensor operations shared by every objective: log-probs of chosen tokens, entropy, masked
reductions and whitening.

The expensive step of every objective is the LM head: ``(N, H) @ (H, V)`` logits for N tokens
and a vocabulary of V = 150k would be tens of GiB at long context. :func:`token_logps` never
needs all of them at once: it runs the head on ``chunk_size`` tokens at a time under activation
checkpointing, so one chunk's logits exist in the forward pass and (recomputed) in the
backward pass, and the result and gradients are the same as the direct computation.

Only ``torch`` is imported here, so losses, data code and tests can use it without
``accelerate`` or ``transformers``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Half-precision log-softmax loses about three digits; every log-prob is computed in float32.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., index]`` without keeping the full log-softmax tensor.

    Args:
        logits: ``(..., V)``, any float dtype; bf16/fp16 are upcast to float32.
        index: ``(...)`` long, values in ``[0, V)``.

    Returns:
        ``(...)`` float32 (float64 stays float64): the gathered logit minus the logsumexp over
        the vocabulary, which is the log-probability of ``index``.
    """
    logits = _upcast(logits)
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension: ``(..., V) -> (...)``, float32.

    Uses ``H = logsumexp(z) - sum_v p_v z_v``, which stays finite for ``-inf`` logits only when
    their probability is exactly 0, so masked vocabularies should use a large negative number.
    """
    logits = _upcast(logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


class TokenStats(NamedTuple):
    """Per-token results of :func:`token_logps`.

    A NamedTuple (not a dataclass) so DDP, FSDP and accelerate's output conversion, which walk
    tuples, see the tensors inside it.

    Attributes:
        logps: ``(B, T)`` float32, ``log p(labels[:, t])``; differentiable.
        entropy: ``(B, T)`` float32 entropy of the predicted distribution, detached; None unless
            asked for.
        argmax_correct: ``(B, T)`` bool, whether the most likely token equals the label;
            detached; None unless asked for.
    """

    logps: torch.Tensor
    entropy: torch.Tensor | None = None
    argmax_correct: torch.Tensor | None = None


def auto_chunk_size(num_tokens: int, vocab_size: int, budget_elements: int = 2**26) -> int | None:
    """Tokens per LM-head chunk so that one chunk's logits hold at most ``budget_elements``.

    Rule: None (no chunking) when ``num_tokens * vocab_size <= budget_elements``; otherwise
    ``max(1, budget_elements // vocab_size)``. The default budget, 2**26 elements, is 256 MiB of
    float32 logits per chunk (the log-softmax temporaries add two or three times that), e.g.
    442 tokens per chunk for a 151,646-token vocabulary.
    """
    if num_tokens * vocab_size <= budget_elements:
        return None
    return max(1, budget_elements // vocab_size)


def logps_and_stats(
    logits: torch.Tensor, labels: torch.Tensor, with_stats: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs of ``labels`` ``(n,)`` under ``logits`` ``(n, V)``, plus entropy and argmax
    correctness when ``with_stats`` (no gradient).

    One logsumexp serves the log-probs and the entropy (``H = lse - sum_v p_v z_v`` with
    ``p = exp(z - lse)``), so the stats cost two more passes over the ``(n, V)`` float32 logits,
    not a separate softmax and a second logsumexp. Negative labels (ignore index) get log-prob 0
    and ``argmax_correct`` False; their entropy is still reported.
    """
    logits = _upcast(logits)
    ignored = labels < 0
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (picked - lse).masked_fill(ignored, 0.0)
    if not with_stats:
        return logps, None, None
    # Computed last: during the checkpointed recomputation in backward, autograd stops as soon
    # as the tensors saved for the gradient are rebuilt, so this part is not re-run (a test
    # counts the calls).
    with torch.no_grad():
        probs = (logits - lse.unsqueeze(-1)).exp_()
        entropy = lse - (probs * logits).sum(dim=-1)
        correct = (logits.argmax(dim=-1) == labels) & ~ignored
    return logps, entropy, correct


def _head_chunk(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module, temperature: float, with_stats: bool, stats_fn=None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs (and optionally stats) of one chunk: hidden ``(n, H)``, labels ``(n,)``."""
    logits = lm_head(hidden)
    if temperature != 1.0:
        logits = logits / temperature
    return (stats_fn or logps_and_stats)(logits, labels, with_stats)


def token_logps(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_stats: bool = False,
    stats_fn=None,
) -> TokenStats:
    """Log-probabilities of ``labels`` under ``lm_head(hidden) / temperature``.

    Args:
        hidden: ``(B, T, H)``, aligned so that ``hidden[:, t]`` predicts ``labels[:, t]``.
        lm_head: the output projection as a module. It is *called*, never read through
            ``.weight``, so DeepSpeed ZeRO-3 (which gathers weights in a forward hook) and PEFT
            wrappers keep working. ``nn.Identity()`` turns ``hidden`` into logits directly.
        labels: ``(B, T)`` long. Negative labels (ignore index) get log-prob 0, entropy of their
            position is still reported, and ``argmax_correct`` is False there.
        chunk_size: tokens per head call. None, or a value ``>= B * T``, computes directly.
            Otherwise the ``B * T`` tokens are processed ``chunk_size`` at a time, each chunk
            under non-reentrant activation checkpointing: only one chunk's ``(chunk, V)``
            logits exist at a time in the forward and the backward pass (the head is re-run in
            backward), at the price of a second head matmul. Gradients are exact.
        temperature: logits are divided by it (sampling temperature of the policy).
        with_stats: also return entropy and argmax correctness (no gradient).
        stats_fn: replaces :func:`logps_and_stats` (same signature), e.g. a ``torch.compile``-d
            copy of it that fuses the passes over the ``(chunk, V)`` logits.

    Returns:
        :class:`TokenStats` with ``(B, T)`` tensors.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be None or >= 1, got {chunk_size}")
    batch, length = labels.shape
    flat_hidden = hidden.reshape(batch * length, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    num_tokens = flat_labels.numel()
    if chunk_size is None or chunk_size >= num_tokens:
        parts = [_head_chunk(flat_hidden, flat_labels, lm_head, temperature, with_stats, stats_fn)]
    else:
        # split (not indexing) so the backward of all chunks is one concatenation, not one
        # zero-filled (N, H) gradient per chunk.
        parts = [
            checkpoint(_head_chunk, h, y, lm_head, temperature, with_stats, stats_fn, use_reentrant=False)
            for h, y in zip(flat_hidden.split(chunk_size), flat_labels.split(chunk_size))
        ]

    def join(index: int) -> torch.Tensor | None:
        if parts[0][index] is None:
            return None
        return torch.cat([part[index] for part in parts]).reshape(batch, length)

    return TokenStats(logps=join(0), entropy=join(1), argmax_correct=join(2))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values * mask`` over ``dim`` (all dimensions when None).

    ``mask`` is bool or float weights, broadcastable to ``values``.
    """
    weighted = values * mask.to(values.dtype)
    return weighted.sum() if dim is None else weighted.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Weighted mean ``sum(values * mask) / sum(mask)`` over ``dim`` (all when None).

    ``mask`` is bool or float weights with the shape of ``values``. Where the mask sums to 0
    the result is 0 (an empty row has no loss) rather than NaN.
    """
    weights = mask.to(values.dtype)
    denominator = weights.sum() if dim is None else weights.sum(dim=dim)
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return masked_sum(values, weights, dim) / safe


def whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, all_reduce=None
) -> torch.Tensor:
    """Normalise ``values`` to unit variance over the masked elements (RL advantages).

    Args:
        values: any shape, e.g. ``(B, T)``.
        mask: bool or 0/1 float of the same shape; at least two elements must be set.
        shift_mean: subtract the masked mean; when False the mean is kept (only the scale
            changes), as for advantages whose sign must survive.
        eps: added to the variance.
        all_reduce: ``tensor -> tensor`` summing a 0-d tensor over processes (e.g.
            ``lambda t: accelerator.reduce(t, "sum")``), so that every process whitens with
            the statistics of all processes' elements; None uses this tensor's alone.

    Returns:
        Same shape; positions outside the mask are 0. The variance is the unbiased (Bessel
        corrected) masked variance.
    """
    total = all_reduce if all_reduce is not None else (lambda t: t)
    weights = mask.to(values.dtype)
    count = total(weights.sum())
    if count < 2:
        raise ValueError(f"whiten needs at least 2 masked elements, got {count.item():g}")
    mean = total(masked_sum(values, weights)) / count
    centered = values - mean
    variance = total(masked_sum(centered.square(), weights)) / (count - 1)
    result = centered * torch.rsqrt(variance + eps)
    if not shift_mean:
        result = result + mean
    return torch.where(weights > 0, result, torch.zeros_like(result))
