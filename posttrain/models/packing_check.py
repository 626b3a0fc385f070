"""A start-up probe that packed examples cannot see each other inside the model.

Packed and padding-free batches carry no attention mask: examples in one row are separated only
by position ids that restart at 0 (see :mod:`posttrain.data.collate`). Whether the model turns
those position ids into a block-diagonal causal mask depends on the ``transformers`` version, the
attention implementation, the batch shape (FlashAttention-2 uses them only for one-row batches)
and on being called with ``use_cache=False``. Rather than trust a table of versions, the trainer
runs :func:`check_packing_isolation` once, on the model it is about to train, and refuses to pack
if examples leak into each other.
"""

from __future__ import annotations

import torch

from posttrain.models.attention import VARLEN_NAMES, attention_name, varlen_kwargs

FIRST_LENGTH, SECOND_LENGTH = 7, 5
# 16-bit models differ from separate forwards by rounding alone (other matmul shapes, other
# kernels), so their tolerance is relative to the logit scale.
HALF_PRECISION_RELATIVE_ATOL = 5e-2
# Changing the first example must leave the second one's logits unchanged up to this (relative)
# amount in every dtype: the shapes are identical, so only a leak can change them.
CROSS_TALK_RELATIVE_ATOL = 1e-4


def _logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    # called as TokenLogProbs calls it in training, varlen boundaries included
    extra = varlen_kwargs(model, position_ids)
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra)
    return out.logits.float()


def _vocab_size(model, vocab_size: int | None) -> int:
    if vocab_size is not None:
        return vocab_size
    embeddings = model.get_input_embeddings()
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return embeddings.num_embeddings
    return model.config.vocab_size


def _probe(model, vocab_size: int, batch_rows: int) -> tuple[float, float, float]:
    """(max |packed - separate| logits, max change of the second example's logits when the first
    example changes, max |logit|), for ``batch_rows`` rows each packing a 7- and a 5-token example."""
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(0)

    def tokens(length: int) -> torch.Tensor:
        return torch.randint(0, vocab_size, (batch_rows, length), generator=generator).to(device)

    first, second, first_changed = tokens(FIRST_LENGTH), tokens(SECOND_LENGTH), tokens(FIRST_LENGTH)
    positions = torch.cat([torch.arange(FIRST_LENGTH), torch.arange(SECOND_LENGTH)]).to(device)
    positions = positions.expand(batch_rows, -1)

    separate = torch.cat([_logits(model, first, None), _logits(model, second, None)], dim=1)
    packed = _logits(model, torch.cat([first, second], dim=1), positions)
    packed_changed = _logits(model, torch.cat([first_changed, second], dim=1), positions)
    error = (packed - separate).abs().max().item()
    cross_talk = (packed[:, FIRST_LENGTH:] - packed_changed[:, FIRST_LENGTH:]).abs().max().item()
    return error, cross_talk, separate.abs().max().item()


def check_packing_isolation(
    model, *, vocab_size: int | None = None, atol: float | None = None, batch_rows: int = 2, device=None
) -> float:
    """Check that examples packed into one row do not attend to each other; return the error.

    Forwards ``batch_rows`` rows, each packing two random examples (7 and 5 tokens) with restarting
    ``position_ids``, ``attention_mask=None`` and ``use_cache=False`` -- exactly how packed batches
    are trained -- and compares the logits ``(batch_rows, 12, V)`` with forwarding each example on
    its own. It also re-runs the packed rows with the first examples replaced: the second
    examples' logits must not move. Pass ``batch_rows=1`` for padding-free batches (one row).

    ``atol``: tolerance on the max absolute logit difference; None means 1e-4 for 32/64-bit models
    and ``0.05 * max(1, max |logit|)`` for 16-bit ones (rounding alone differs between shapes).
    The model is put in eval mode (no dropout) for the probe and every submodule's training flag
    is restored afterwards; no gradients are computed.

    ``device``: where training will run. A model whose attention kernel exists on GPUs only
    (flash_attention_*, torch_varlen) is moved there first, as ``accelerator.prepare`` would
    right afterwards; other models are probed where they are.

    Returns the max absolute logit difference between packed and separate forwards. Raises
    ``RuntimeError`` naming the attention implementation when attention leaks across examples.
    """
    if device is not None and attention_name(model) in VARLEN_NAMES:
        model.to(device)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            error, cross_talk, scale = _probe(model, _vocab_size(model, vocab_size), batch_rows)
    finally:
        for module, training in modes:
            module.training = training
    scale = max(1.0, scale)
    if atol is None:
        half = model.get_input_embeddings().weight.dtype in (torch.float16, torch.bfloat16)
        atol = HALF_PRECISION_RELATIVE_ATOL * scale if half else 1e-4
    cross_atol = CROSS_TALK_RELATIVE_ATOL * scale
    if error > atol or cross_talk > cross_atol:
        implementation = attention_name(model)
        raise RuntimeError(
            f"attention leaks across packed examples for this model (attn_implementation="
            f"{implementation!r}, {batch_rows} row(s) per batch): packed logits differ from separate "
            f"forwards by {error:.3g} (tolerance {atol:.3g}) and changing one example moves the next "
            f"one's logits by {cross_talk:.3g} (tolerance {cross_atol:.3g}). The model must turn "
            "restarting position_ids into a block-diagonal mask when called with attention_mask=None "
            "and use_cache=False (transformers 5.x does for sdpa, eager and flex_attention; posttrain "
            "passes torch_varlen and flash_attention_2 the boundaries itself). Fix: set packing=False "
            "and padding_free=False, or use another attn_implementation."
        )
    return error
