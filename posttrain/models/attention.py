"""Variable-length attention for packed and padding-free rows, and the checks that the chosen
attention kernel is usable before a run starts.

Packed rows hold several examples separated only by position ids that restart (see
:mod:`posttrain.data.collate`). Under ``sdpa`` or ``eager``, transformers turns them into a
materialised ``(B, 1, T, T)`` block-diagonal mask; a dense mask keeps sdpa off its flash backend
and spends the full ``T^2`` on every row. A variable-length kernel instead takes the boundaries
as cumulative sequence lengths (``cu_seqlens``) and does only the work inside each example.

Implementations offered (``attn_implementation``):

- ``torch_varlen``: PyTorch's own FlashAttention varlen kernel
  (``torch.nn.attention.varlen.varlen_attn``, CUDA only, no extra package), registered with
  transformers under that name. Rows of any batch shape are flattened into one varlen batch.
- ``flash_attention_2`` / ``flash_attention_3``: transformers' FlashAttention path (needs the
  ``flash-attn`` package).
- ``flex_attention``: transformers' FlexAttention path (torch); the packed block structure
  becomes a sparse BlockMask.

For the two flash-style names, :func:`varlen_kwargs` computes ``cu_seqlens`` once per forward
from the position ids and passes them down (transformers' ``FlashAttentionKwargs``), so every
layer reuses them and rows of a multi-row batch are separated too.
:func:`posttrain.models.packing_check.check_packing_isolation` calls the model the same way,
so the start-up probe guards exactly the kernel training uses.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch

TORCH_VARLEN = "torch_varlen"
FLASH_NAMES = ("flash_attention_2", "flash_attention_3")
# Implementations that read the sequence boundaries from cu_seqlens keyword arguments.
VARLEN_NAMES = (TORCH_VARLEN, *FLASH_NAMES)


def sequence_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, max_length)`` of the rows of ``position_ids`` ``(B, T)`` flattened into one.

    A sequence starts at every row start and wherever a position id is not its predecessor
    plus one (the rule transformers uses to detect packed rows). ``cu_seqlens`` is ``(S + 1,)``
    int32 on the device of ``position_ids``, from 0 to ``B * T``; ``max_length`` is the longest
    sequence. Reads the device once (the number of sequences is data-dependent).
    """
    batch, length = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    start_index = starts.reshape(-1).nonzero().reshape(-1)
    end = torch.tensor([batch * length], device=position_ids.device)
    cu_seqlens = torch.cat([start_index, end]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())


def attention_name(model) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def varlen_kwargs(model, position_ids: torch.Tensor | None) -> dict:
    """Keyword arguments for ``model(...)`` / its decoder that hand a varlen kernel the sequence
    boundaries of ``position_ids`` ``(B, T)``; empty for other attention implementations."""
    if position_ids is None or attention_name(model) not in VARLEN_NAMES:
        return {}
    cu_seqlens, longest = sequence_boundaries(position_ids)
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest, "max_length_k": longest}


# ----------------------------------------------------------------------------- torch_varlen


def _torch_varlen_kernel(query, key, value, cu_seqlens, max_length, scale):
    """Causal varlen attention through ``torch.nn.attention.varlen.varlen_attn``.

    ``query`` ``(N, Hq, D)``, ``key``/``value`` ``(N, Hkv, D)``; returns ``(N, Hq, D)``. Adapts to
    the two signatures torch has shipped (``is_causal=`` before ``window_size=``) and repeats
    key/value heads where the installed version has no ``enable_gqa``.
    """
    from torch.nn.attention.varlen import varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    options = {"scale": scale}
    if "window_size" in parameters:
        options["window_size"] = (-1, 0)  # (-1, 0): causal, no window
    else:
        options["is_causal"] = True
    if query.shape[1] != key.shape[1]:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_length, max_length, **options)


# Replaced in tests by a CPU reference with the same contract (the real kernel is CUDA-only).
KERNEL = {"varlen": _torch_varlen_kernel}


def _half_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """FlashAttention takes bf16/fp16 only. Custom ops are not autocast, so do its cast here:
    under autocast fp32 inputs (rotary embeddings upcast q and k) go to the autocast dtype."""
    device = tensors[0].device.type
    if tensors[0].dtype == torch.float32 and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return tuple(t.to(dtype) for t in tensors)
    target = next((t.dtype for t in tensors if t.dtype != torch.float32), None)
    return tuple(t.to(target) for t in tensors) if target is not None else tensors


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: ``query`` ``(B, Hq, T, D)``, ``key``/``value``
    ``(B, Hkv, S, D)`` -> ``((B, T, Hq, D), None)``.

    Training forwards (no cache, no padding mask: query and key lengths equal) go through the
    varlen kernel with the boundaries from ``cu_seq_lens_q`` or, when the caller did not pass
    them, from ``position_ids``. Anything else (generation with a KV cache or a padding mask)
    goes to transformers' sdpa function with the mask that :func:`_varlen_mask` built for it.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    cu_seqlens, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or key.shape[2] != length or (cu_seqlens is None and position_ids is None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout:
        raise ValueError(f"attn_implementation={TORCH_VARLEN!r} has no attention dropout (got p={dropout}); set disable_dropout=true")
    if kwargs.get("sliding_window"):
        raise ValueError(f"attn_implementation={TORCH_VARLEN!r} does not implement sliding-window layers; use flash_attention_2 or sdpa")
    if cu_seqlens is None:
        cu_seqlens, longest = sequence_boundaries(position_ids.expand(batch, -1))
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    q, k, v = _half_precision(q, k, v)
    scale = scaling if scaling is not None else dim**-0.5
    out = KERNEL["varlen"](q, k, v, cu_seqlens, longest, scale)
    return out.reshape(batch, length, heads, dim), None


def _varlen_mask(*args, **kwargs):
    """Mask builder paired with ``torch_varlen``: no mask for training forwards (the kernel
    separates packed examples itself); transformers' sdpa mask for everything else, which the
    attention function then hands to sdpa."""
    from transformers.masking_utils import sdpa_mask

    q_length, kv_length = kwargs.get("q_length"), kwargs.get("kv_length")
    if kwargs.get("attention_mask") is None and not kwargs.get("q_offset") and q_length == kv_length:
        return None
    return sdpa_mask(*args, **kwargs)


def register_torch_varlen() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
    AttentionMaskInterface.register(TORCH_VARLEN, _varlen_mask)


# ----------------------------------------------------------------------------- availability


def attention_problem(name: str | None, device_type: str) -> str | None:
    """Why ``attn_implementation=name`` cannot run on ``device_type`` ("cuda", "cpu", ...), with
    the fix; None when it can (or when it is not one whose requirements we know)."""
    alternatives = "use sdpa (any device), flex_attention (CUDA GPUs), or torch_varlen (CUDA GPUs)"
    if name == TORCH_VARLEN:
        if importlib.util.find_spec("torch.nn.attention.varlen") is None:
            return f"{TORCH_VARLEN!r} needs torch.nn.attention.varlen, which this torch ({torch.__version__}) lacks: upgrade torch, or use sdpa or flex_attention"
        if device_type != "cuda":
            return f"{TORCH_VARLEN!r} runs on CUDA GPUs only (PyTorch's FlashAttention kernel); this run is on {device_type}: use sdpa"
    if name in FLASH_NAMES:
        package = "flash_attn_interface" if name == "flash_attention_3" else "flash_attn"
        if importlib.util.find_spec(package) is None:
            return f"{name!r} needs the {package} package (CUDA only), which is not installed: install it, or {alternatives}"
        if device_type != "cuda":
            return f"{name!r} runs on CUDA GPUs only; this run is on {device_type}: {alternatives}"
    if name == "flex_attention":
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return f"'flex_attention' needs torch >= 2.5; this torch is {torch.__version__}"
        if device_type != "cuda":
            return f"'flex_attention' has no backward pass on {device_type} in PyTorch, so it cannot train here: use sdpa"
    return None
