"""``torch.compile`` where it pays (option ``torch_compile``).

Two regions, both compiled in place and lazily (at their first call):

- every transformer block (:func:`posttrain.models.loading.transformer_blocks`). All blocks share
  one code object, so the compiled graph is built once and reused by the others ("regional
  compilation"). Inside a block the compiler fuses the elementwise chain around each matmul
  (RMSNorm, rotary embeddings, SwiGLU, residual adds) and, in training, saves the matmul inputs
  for backward instead of every intermediate, which cuts activation memory. Compiling in place
  (``Module.compile``) keeps parameter names, so checkpoints and ``save_pretrained`` are
  unchanged.
- the log-softmax and stats of the LM head (:func:`posttrain.ops.logps_and_stats`): on a
  ``(chunk, V)`` block of logits it becomes one or two passes instead of about eight.

Shapes vary from batch to batch (sequence length), so both are compiled with ``dynamic=True``.
Gradient checkpointing, LoRA (applied before the first call) and the packing probe work as
without compilation; the first forward and backward pay the compile time.
"""

from __future__ import annotations

import torch

from posttrain.models.loading import transformer_blocks
from posttrain.ops import logps_and_stats


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile every transformer block of ``model`` in place; returns how many. Blocks already
    compiled are left as they are. Raises ValueError for a model without declared blocks."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(
            f"torch_compile: {type(model).__name__} has no transformer blocks (transformers GradientCheckpointingLayer); "
            "set torch_compile=false for this model"
        )
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile(dynamic=True)
    return len(blocks)


_COMPILED_STATS = {}


def compiled_logps_and_stats():
    """A compiled :func:`posttrain.ops.logps_and_stats` (one per process, shared by modules)."""
    if "fn" not in _COMPILED_STATS:
        _COMPILED_STATS["fn"] = torch.compile(logps_and_stats, dynamic=True)
    return _COMPILED_STATS["fn"]
