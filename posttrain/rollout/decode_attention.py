"""Attention for decoding steps on a CPU: one query row per sequence as two batched matmuls.

PyTorch's CPU SDPA kernel works through the ``B x heads`` problems of a decoding step (one query
row against the cache's keys) one small problem at a time; with the benchmark Llama's shapes (64
rows x 8 heads x 32, ~94 cache slots) that costs more than the arithmetic and the memory traffic
(``benchmarks/decode_attention.py``). :func:`decode_attention` computes the same softmax
attention as one ``baddbmm`` for the scores (the mask added in the same call) and one ``bmm`` for
the weighted values; with grouped-query attention the query heads that share a key/value head
become the rows of one matmul, so each key is read once per group. Every other call (a prefill,
training, dropout, options it does not implement) goes to transformers' SDPA function unchanged.

It is registered with transformers' attention interface under :data:`DECODE_ATTENTION` (masks
made as for SDPA) and switched on around ``generate`` by :func:`decoding_attention` on CPU models
whose attention is SDPA; the maths is SDPA's, the floating-point order differs (agreement to
float32 rounding, tested).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

DECODE_ATTENTION = "posttrain_decode"
# keyword arguments this implementation may ignore (they carry no change to the maths here)
_NEUTRAL = frozenset({"position_ids", "cache_position", "output_attentions", "use_cache", "is_causal", "layer_idx"})


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention-function signature. ``query (B, H, Q, D)``, ``key``/``value``
    ``(B, KV, L, D)``, ``attention_mask`` a boolean ``(B, 1, Q, L)`` (True: attend) or None.
    Returns ``((B, Q, H, D), None)``."""
    unsupported = dropout != 0.0 or any(value is not None and name not in _NEUTRAL for name, value in kwargs.items())
    if query.shape[2] != 1 or unsupported or query.device.type != "cpu" or (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    # (B * KV, G, D): the G query heads of one key/value head are the rows of one matmul
    grouped = query.reshape(rows * kv_heads, group, dim)
    keys = key.reshape(rows * kv_heads, length, dim)
    if attention_mask is None:
        scores = torch.bmm(grouped, keys.transpose(1, 2)).mul_(scale)
    else:
        blocked = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~attention_mask, float("-inf"))
        bias = blocked.expand(rows, kv_heads, group, length).reshape(rows * kv_heads, group, length)
        scores = torch.baddbmm(bias, grouped, keys.transpose(1, 2), alpha=scale)
    output = torch.bmm(scores.softmax(-1), value.reshape(rows * kv_heads, length, dim))  # (B * KV, G, D)
    return output.view(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextmanager
def decoding_attention(model):
    """Inside, ``model`` (a transformers model on CPU with SDPA attention) attends with
    :func:`decode_attention`; otherwise nothing changes. Restored on exit."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    device = next(model.parameters()).device
    if before != "sdpa" or device.type != "cpu" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
