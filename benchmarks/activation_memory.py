"""Where a training step's memory goes, counted on CPU, and the GPU peak estimated from it.

    python benchmarks/activation_memory.py --json out.json      # Qwen2.5-0.5B shape, 24 layers (~5 min on 2 cores)
    python benchmarks/activation_memory.py --layers 4            # faster; per-layer figures extrapolated to 24
    python benchmarks/activation_memory.py --reuse out.json --target-positions 10240 --target-rows 5
    python benchmarks/activation_memory.py --tiny --json out.json  # the same code on a toy model in seconds

No GPU is needed: the script counts bytes, it does not time anything. The model has
Qwen2.5-0.5B's shape (``transformers.Qwen2Config``: 24 layers x 896, 14 query / 2 key-value
heads, MLP 4864, 151,936-token vocabulary, tied embeddings) with random weights, sdpa attention.
Its forward runs the way the SFT trainer runs it: ``TokenLogProbs(model, chunk_size)`` called as
``module(input_ids, position_ids, with_stats=True, positions=trained_positions)`` and the loss
``-(logps * weights).sum()``, with the LM head chunked as ``posttrain.ops.auto_chunk_size`` would
chunk the issue's 16k-token step.

What is counted, per configuration (``baseline``: float32 weights under
``torch.autocast("cpu", bfloat16)``, the CPU stand-in for CUDA bf16 autocast, whose op lists
differ slightly; ``bf16_weights``: ``model.to(bfloat16)``, no autocast), each with activation
checkpointing off and on (``posttrain.models.loading.enable_activation_checkpointing``), each for
two layouts (``padded``: position ids 0..T-1 in every row, no mask, so sdpa runs its causal
flash kernel; ``packed``: two examples per row, whose restarting position ids make transformers
build a dense block-diagonal mask, so sdpa takes a masked kernel and key/value heads are
repeated to the query heads):

1. *Saved for backward* (``torch.autograd.graph.saved_tensors_hooks``): every storage a forward
   saves, counted once (by data pointer), by kind: the model's parameters (not activation memory,
   reported only), bf16 tensors of a parameter's shape or its transpose under autocast (autocast's
   weight copies, cached per forward), tensors whose last two dimensions are both the sequence
   length (O(T^2): the masked kernel's additive mask, which CUDA's memory-efficient / cuDNN kernels
   save as well; a per-head T^2 tensor would be CPU's math kernel, which CUDA avoids, and is left
   out of the GPU estimate), and activations. Activation checkpointing keeps each checkpointed
   block's inputs alive through the checkpoint's closure, not through saved tensors, so the
   checkpoint functions (the model's layers' and the chunked head's) are wrapped to count those
   inputs too. Storages are attributed to where they are first saved: the embedding, each
   decoder layer, the final norm, the head; a storage saved by several layers (rotary tables, the
   mask) counts once, as shared.
2. *Live bytes* (a ``TorchDispatchMode`` following every storage created in the step, without
   parameters and inputs), forward and backward: after the forward (checks that nothing big is
   held outside the saved tensors), the peak during the head's backward (the chunked head
   re-runs under checkpointing, so one chunk's ``(chunk, vocabulary)`` float32 logits and their
   gradient live there, with autocast's bf16 copy of the head weight and the gradient of the tied
   embedding), the peak during the decoder's backward, and the largest single tensor allocated.

Per-token figures (bytes per position per layer, and per trained token for the head) are
measured at two lengths (256 and 512 tokens in one row by default; the head runs in chunks at
both, at the longer one with the chunk of the target step); they are linear when the two agree.
On CPU, sdpa takes its flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) for both
layouts and saves q, k, v, the output and the log-sum-exp, as CUDA's flash and memory-efficient
kernels do; the only T^2 tensor is the packed layout's mask. The GPU estimate for a step of
``--target-positions`` positions in ``--target-rows`` rows (default the issue's: 8 rows of 2048 =
16,384 positions) adds up

- parameter bytes: float32 weights under autocast: weights 4 + gradients 4 + AdamW 8 bytes per
  parameter; bf16 weights with float32 masters (``posttrain.train.master_weights``): 2 + 2 + 8 + 4,
  and 4 more for the float32 gradients during the optimizer step;
- autocast's weight copies saved for backward (per layer x 24, plus the rest);
- activations: 24 x (per-layer bytes/position x positions + mask bytes x rows x row length^2)
  + embedding/final-norm/shared bytes/position x positions + head bytes x trained tokens;
- a transient: the live bytes the head's backward adds (measured at the target's chunk, with the
  full vocabulary), the bytes the forward's end adds (the head's forward and, under autocast,
  the cache of weight copies) or, with checkpointing, one layer's recomputed activations.

It is reported two ways. ``additive``: every parameter byte (gradients included) plus the
largest transient, the issue's formula, an upper bound. ``peak``: the largest of the moments
the step goes through -- the forward's end and the head's backward (no parameter gradients
yet but the ones the head makes, which its measured transient includes), one layer's
recomputation under checkpointing (every gradient counted: an upper bound) and the optimizer
step (no activations) -- which is what ``torch.cuda.max_memory_allocated`` measures.

This is an estimate from CPU accounting, not a GPU measurement: it leaves out the CUDA context,
cuBLAS/cuDNN workspaces, the allocator's rounding and kernel-specific temporaries, and assumes
CUDA's sdpa picks flash (padded, GQA without repeating key/value heads) or memory-efficient
attention (packed, with the mask), never the math kernel, whose per-head T^2 scores would add
``rows x 14 x row^2 x 2`` bytes per layer.

``--reuse FILE`` recomputes the estimate for another ``--target-*`` from an earlier ``--json``
without measuring again; ``--full-backward`` runs the whole backward (by default it stops once
the head's backward is done: the rest is not used). The full-size run takes about 5 minutes on
2 busy cores and 11 GiB of memory at its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2**30
ISSUE_MEASURED_GIB = {"padded": 32.3, "packed": 34.9}  # baseline, checkpointing off, H200
QWEN2_5_0_5B = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096,
    "tie_word_embeddings": True, "rope_theta": 1e6,
}
TINY = {
    "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "tie_word_embeddings": True, "rope_theta": 1e6,
}
CONFIGS = ("baseline", "bf16_weights")
LAYOUTS = ("padded", "packed")
# bytes per parameter held through the step: weights, gradients, AdamW's two moments, float32 masters
PARAMETER_BYTES = {
    "baseline": {"weights": 4, "grads": 4, "adamw": 8, "masters": 0},
    "bf16_weights": {"weights": 2, "grads": 2, "adamw": 8, "masters": 4},
}
STEP_EXTRA_BYTES = {"baseline": 0, "bf16_weights": 4}  # MasterWeightAdamW's float32 gradients


# ----------------------------------------------------------------------------- model and batch


def build_model(shape: dict, layers: int):
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(**{**shape, "num_hidden_layers": layers}, attn_implementation="sdpa")
    model = transformers.Qwen2ForCausalLM(config)
    model.train()
    return model


def parameter_count(shape: dict, model) -> int:
    """Parameters of the full-depth model (``shape``'s layer count) from ``model``'s layers."""
    layers = model.model.layers
    per_layer = sum(p.numel() for p in layers[0].parameters())
    return sum(p.numel() for p in model.parameters()) + (shape["num_hidden_layers"] - len(layers)) * per_layer


def make_batch(rows: int, length: int, layout: str, vocab: int, seed: int) -> dict:
    """``rows`` x ``length`` random tokens. ``packed``: two examples per row, position ids
    restarting at the second; every token but each example's first is trained."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    position_ids = torch.arange(length).repeat(rows, 1)
    weights = torch.ones(rows, length)
    weights[:, 0] = 0.0
    segments = 1
    if layout == "packed":
        half = length // 2
        position_ids[:, half:] -= half
        weights[:, half] = 0.0
        segments = 2
    positions = torch.nonzero(weights.reshape(-1)).reshape(-1)
    return {"input_ids": input_ids, "position_ids": position_ids, "weights": weights, "positions": positions, "segments": segments}


# ----------------------------------------------------------------------------- saved tensors


@dataclass
class Entry:
    nbytes: int
    kind: str  # parameter | autocast_copy | t2_shared | t2_per_head | checkpoint_input | activation
    region: str  # embed | layer<i> | final | head | shared
    shape: tuple
    dtype: str
    sdpa: bool  # saved by scaled_dot_product_attention


@dataclass
class Ledger:
    """Storages saved for backward (or held by a checkpoint) during one forward, each counted once."""

    parameter_ptrs: set
    parameter_shapes: set
    autocast: bool
    length: int
    region: str = "embed"
    in_sdpa: bool = False
    entries: dict = field(default_factory=dict)
    keep: list = field(default_factory=list)  # the storages, so that no data pointer is reused meanwhile

    def record(self, tensor: torch.Tensor, via_checkpoint: bool = False) -> None:
        storage = tensor.untyped_storage()
        nbytes, ptr = storage.nbytes(), storage.data_ptr()
        if nbytes == 0:
            return
        entry = self.entries.get(ptr)
        if entry is not None:
            if entry.region != self.region and entry.region.startswith("layer"):
                entry.region = "shared"
            return
        self.keep.append(storage)
        shape = tuple(tensor.shape)
        if ptr in self.parameter_ptrs:
            kind = "parameter"
        elif self.autocast and tensor.dtype == torch.bfloat16 and shape in self.parameter_shapes:
            kind = "autocast_copy"
        elif len(shape) >= 2 and shape[-1] == shape[-2] == self.length:
            kind = "t2_per_head" if self.in_sdpa and len(shape) == 4 and shape[1] > 1 else "t2_shared"
        else:
            kind = "checkpoint_input" if via_checkpoint else "activation"
        self.entries[ptr] = Entry(nbytes, kind, self.region, shape, str(tensor.dtype).replace("torch.", ""), self.in_sdpa)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.record(tensor)
        return tensor

    def totals(self) -> dict:
        """Bytes by kind, and by region for everything that is neither a parameter nor a copy."""
        by_kind: dict[str, int] = {}
        by_region: dict[str, dict[str, int]] = {}
        for entry in self.entries.values():
            by_kind[entry.kind] = by_kind.get(entry.kind, 0) + entry.nbytes
            if entry.kind != "parameter":
                region = by_region.setdefault(entry.region, {})
                region[entry.kind] = region.get(entry.kind, 0) + entry.nbytes
        return {"by_kind": by_kind, "by_region": by_region}


def _checkpoint_tensors(function, args, kwargs) -> list[torch.Tensor]:
    """Tensors a checkpoint keeps for its recomputation: its arguments and, for a
    ``functools.partial`` (transformers' layers), the arguments bound in it."""
    import functools

    found = [*args, *kwargs.values()]
    if isinstance(function, functools.partial):
        found += [*function.args, *function.keywords.values()]
    tensors = [item for item in tree_flatten(found)[0] if isinstance(item, torch.Tensor)]
    return [tensor for tensor in tensors if not isinstance(tensor, torch.nn.Parameter)]


@contextlib.contextmanager
def recording(ledger: Ledger, model):
    """Install the saved-tensor hooks, the region hooks, the sdpa flag and the checkpoint
    wrappers for one forward; remove them all afterwards."""
    import torch.nn.functional as F

    import posttrain.ops

    handles = []
    decoder = model.model

    def set_region(name):
        def hook(*_):
            ledger.region = name

        return hook

    handles.append(decoder.register_forward_pre_hook(set_region("embed")))
    handles.append(decoder.register_forward_hook(set_region("head")))
    for index, layer in enumerate(decoder.layers):
        handles.append(layer.register_forward_pre_hook(set_region(f"layer{index}")))
        handles.append(layer.register_forward_hook(set_region("final")))

    def counting(checkpoint_function):
        def wrapper(function, *args, **kwargs):
            for tensor in _checkpoint_tensors(function, args, kwargs):
                ledger.record(tensor, via_checkpoint=True)
            return checkpoint_function(function, *args, **kwargs)

        return wrapper

    sdpa = F.scaled_dot_product_attention

    def flagged_sdpa(*args, **kwargs):
        ledger.in_sdpa = True
        try:
            return sdpa(*args, **kwargs)
        finally:
            ledger.in_sdpa = False

    wrapped = [module for module in model.modules() if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func")]
    originals = [module.__dict__.get("_gradient_checkpointing_func") for module in wrapped]
    head_checkpoint = posttrain.ops.checkpoint
    try:
        for module in wrapped:
            module._gradient_checkpointing_func = counting(module._gradient_checkpointing_func)
        posttrain.ops.checkpoint = counting(head_checkpoint)
        F.scaled_dot_product_attention = flagged_sdpa
        with torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda tensor: tensor):
            yield ledger
    finally:
        F.scaled_dot_product_attention = sdpa
        posttrain.ops.checkpoint = head_checkpoint
        for module, original in zip(wrapped, originals):
            if original is None:
                del module._gradient_checkpointing_func
            else:
                module._gradient_checkpointing_func = original
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- live bytes


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created since entering (parameters and inputs excluded), by phase:
    the peak of each phase, the live keys at that peak, and the largest single storage."""

    def __init__(self, preexisting: list[torch.Tensor], gradient_like: set):
        super().__init__()
        self.preexisting = {tensor.untyped_storage()._cdata for tensor in preexisting}
        self.gradient_like = gradient_like  # (shape, dtype) of the parameters
        self.live: dict[int, tuple[StorageWeakRef, int, bool]] = {}
        self.current = 0
        self.phase = "forward"
        self.peaks: dict[str, int] = {}
        self.peak_gradient_like: dict[str, int] = {}
        self.largest = (0, (), None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._add(tensor)
        self._sweep()
        if self.current > self.peaks.get(self.phase, -1):
            self.peaks[self.phase] = self.current
            self.peak_gradient_like[self.phase] = sum(nbytes for _, nbytes, like in self.live.values() if like)
        return out

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, nbytes = storage._cdata, storage.nbytes()
        if key in self.preexisting or nbytes == 0:
            return
        known = self.live.get(key)
        if known is not None and not known[0].expired():
            return
        if known is not None:
            self.current -= known[1]
        like = (tuple(tensor.shape), tensor.dtype) in self.gradient_like and nbytes == tensor.numel() * tensor.element_size()
        self.live[key] = (StorageWeakRef(storage), nbytes, like)
        self.current += nbytes
        if nbytes > self.largest[0]:
            self.largest = (nbytes, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))

    def _sweep(self) -> None:
        dead = [key for key, (ref, _, _) in self.live.items() if ref.expired()]
        for key in dead:
            self.current -= self.live.pop(key)[1]

    def mark(self, phase: str) -> int:
        self._sweep()
        self.phase = phase
        return self.current


# ----------------------------------------------------------------------------- one measurement


class _HeadBackwardDone(Exception):
    """Raised from the hook on the decoder's output gradient to end a backward whose head part
    is all that is measured."""


def measure(model, config: str, checkpointing: bool, layout: str, rows: int, length: int, chunk_size: int, backward: str) -> dict:
    """Saved-tensor accounting of one forward, and live bytes through it and, with ``backward``
    "head" or "full", through the head's part of the backward or all of it."""
    from posttrain.models.causal_lm import TokenLogProbs

    vocab = model.config.vocab_size
    batch = make_batch(rows, length, layout, vocab, seed=length)
    module = TokenLogProbs(model, chunk_size=chunk_size)
    autocast = config == "baseline"
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "attention_mask": None}
    with amp:
        module._split_head_ok = module._head_is_plain_linear(inputs)
    if not module._split_head_ok:
        raise RuntimeError("the model's head is not a plain linear layer: TokenLogProbs would not run the chunked head")

    parameters = list(model.parameters())
    shapes = {tuple(p.shape) for p in parameters} | {tuple(p.shape)[::-1] for p in parameters if p.dim() == 2}
    ledger = Ledger({p.untyped_storage().data_ptr() for p in parameters}, shapes, autocast, length)
    preexisting = parameters + list(model.buffers()) + [batch[name] for name in ("input_ids", "position_ids", "weights", "positions")]
    tracker = LiveBytes(preexisting, {(tuple(p.shape), p.dtype) for p in parameters})
    decoder = model.model

    def body_backward_starts(_grad):
        tracker.mark("body_backward")
        if backward == "head":
            raise _HeadBackwardDone

    def watch_output(_module, _args, output):
        hidden = output.last_hidden_state
        if hidden.requires_grad:
            hidden.register_hook(body_backward_starts)

    handle = decoder.register_forward_hook(watch_output)
    started = time.perf_counter()
    try:
        with tracker:
            with recording(ledger, model):
                with amp:
                    stats = module(batch["input_ids"], batch["position_ids"], with_stats=True, positions=batch["positions"])
                    loss = -(stats.logps * batch["weights"]).sum()
            after_forward = tracker.mark("head_backward")
            forward_s = time.perf_counter() - started
            if backward != "none":
                with contextlib.suppress(_HeadBackwardDone):
                    loss.backward()
                tracker.mark("done")
    finally:
        handle.remove()
    backward_s = time.perf_counter() - started - forward_s
    model.zero_grad(set_to_none=True)
    del stats, loss

    positions = rows * length
    trained = int(batch["positions"].numel())
    totals = ledger.totals()
    layers = [name for name in totals["by_region"] if name.startswith("layer")]

    def region_bytes(name: str, kinds: tuple[str, ...]) -> int:
        return sum(totals["by_region"].get(name, {}).get(kind, 0) for kind in kinds)

    linear_kinds = ("activation", "checkpoint_input")
    per_layer = [region_bytes(name, linear_kinds) for name in layers]
    per_layer_t2 = [region_bytes(name, ("t2_shared",)) for name in layers]
    per_layer_copies = [region_bytes(name, ("autocast_copy",)) for name in layers]
    other = sum(region_bytes(name, linear_kinds) for name in ("embed", "final", "shared"))
    shared_t2 = sum(region_bytes(name, ("t2_shared",)) for name in ("embed", "final", "shared", "head"))
    other_copies = sum(region_bytes(name, ("autocast_copy",)) for name in ("embed", "final", "shared", "head"))
    head = region_bytes("head", linear_kinds)
    saved_total = sum(bytes_ for kind, bytes_ in totals["by_kind"].items() if kind != "parameter")
    live = {}
    for phase in {"none": ("forward",), "head": ("forward", "head_backward"), "full": ("forward", "head_backward", "body_backward")}[backward]:
        peak = tracker.peaks.get(phase, after_forward)
        live[phase] = {"peak_bytes": peak, "excess_over_forward_bytes": peak - after_forward,
                       "gradient_like_at_peak_bytes": tracker.peak_gradient_like.get(phase, 0)}
    t2_tensors = sorted({(entry.kind, entry.shape, entry.dtype) for entry in ledger.entries.values() if entry.kind.startswith("t2")})
    return {
        "config": config, "checkpointing": checkpointing, "layout": layout, "rows": rows, "length": length,
        "positions": positions, "trained_tokens": trained, "segments_per_row": batch["segments"], "layers": len(decoder.layers),
        "chunk_size": chunk_size, "seconds": {"forward": round(forward_s, 2), "backward": round(backward_s, 2) if backward != "none" else None}, "backward": backward,
        "saved_bytes_by_kind": totals["by_kind"],
        "saved_bytes_by_region": totals["by_region"],
        "saved_bytes_excluding_parameters": saved_total,
        "activation_bytes": saved_total - totals["by_kind"].get("autocast_copy", 0),
        "per_layer_bytes_per_position": statistics.median(per_layer) / positions if per_layer else 0.0,
        "per_layer_t2_bytes_per_row_length_squared": statistics.median(per_layer_t2) / (rows * length**2) if per_layer_t2 else 0.0,
        "per_layer_autocast_copy_bytes": statistics.median(per_layer_copies) if per_layer_copies else 0,
        "other_bytes_per_position": other / positions,
        "other_t2_bytes_per_row_length_squared": shared_t2 / (rows * length**2),
        "other_autocast_copy_bytes": other_copies,
        "head_bytes_per_trained_token": head / trained,
        "middle_layer_saved": [
            {"kind": e.kind, "shape": list(e.shape), "dtype": e.dtype, "bytes": e.nbytes, "sdpa": e.sdpa}
            for e in ledger.entries.values() if e.region == f"layer{len(decoder.layers) // 2}"
        ],
        "t2_tensors": [{"kind": kind, "shape": list(shape), "dtype": dtype} for kind, shape, dtype in t2_tensors],
        "t2_per_head_bytes": totals["by_kind"].get("t2_per_head", 0),
        "live_after_forward_bytes": after_forward,
        "live_phases": live,
        "largest_tensor": {"bytes": tracker.largest[0], "shape": list(tracker.largest[1]), "dtype": tracker.largest[2]},
    }


# ----------------------------------------------------------------------------- estimate


def estimate(short: dict, long: dict, reference_off: dict, shape: dict, params: int, target: dict) -> dict:
    """GPU peak of ``target`` (positions, rows, trained tokens) from the per-token figures of
    ``long`` (``short`` only for the linearity check); ``reference_off`` is the same
    configuration and layout without checkpointing (its per-layer activations are what
    checkpointing recomputes one layer at a time, its copies what autocast caches)."""
    config, checkpointing = long["config"], long["checkpointing"]
    layers, built = shape["num_hidden_layers"], long["layers"]
    positions, rows, trained = target["positions"], target["rows"], target["trained_tokens"]
    row_length = positions // rows
    t2 = rows * row_length**2
    per_layer = long["per_layer_bytes_per_position"] * positions + long["per_layer_t2_bytes_per_row_length_squared"] * t2
    activations = (
        layers * per_layer
        + long["other_bytes_per_position"] * positions + long["other_t2_bytes_per_row_length_squared"] * t2
        + long["head_bytes_per_trained_token"] * trained
    )
    copies = layers * long["per_layer_autocast_copy_bytes"] + long["other_autocast_copy_bytes"]
    parameter_bytes = {name: per * params for name, per in PARAMETER_BYTES[config].items()}
    resident = parameter_bytes["weights"] + parameter_bytes["adamw"] + parameter_bytes["masters"]
    grads = parameter_bytes["grads"]
    phases = long["live_phases"]
    head_excess = phases["head_backward"]["excess_over_forward_bytes"]
    head_gradients = phases["head_backward"]["gradient_like_at_peak_bytes"]
    forward_excess = phases["forward"]["excess_over_forward_bytes"]
    if checkpointing and config == "baseline":
        # autocast caches every layer's weight copies until the forward ends: the unbuilt layers' too
        forward_excess += (layers - built) * reference_off["per_layer_autocast_copy_bytes"]
    # the moments the peak can be at; gradients exist only from the backward on
    moments = {
        "forward_end": resident + copies + activations + forward_excess,
        "head_backward": resident + copies + activations + head_excess,
        "optimizer_step": resident + grads + STEP_EXTRA_BYTES[config] * params,
    }
    transients = {"forward_end": forward_excess, "head_backward": head_excess - head_gradients}
    if checkpointing:
        recompute = (reference_off["per_layer_bytes_per_position"] * positions
                     + reference_off["per_layer_t2_bytes_per_row_length_squared"] * t2 + reference_off["per_layer_autocast_copy_bytes"])
        moments["layer_recompute"] = resident + grads + copies + activations + recompute  # every gradient: an upper bound
        transients["layer_recompute"] = recompute
    at = max(moments, key=moments.get)
    transient_name = max(transients, key=transients.get)
    # the issue's formula: every parameter-related byte, gradients included, plus activations and the largest transient
    additive = resident + grads + copies + activations + transients[transient_name]
    return {
        "config": config, "checkpointing": checkpointing, "layout": long["layout"],
        "target": {**target, "row_length": row_length},
        "parameters": params,
        "parameter_bytes": parameter_bytes,
        "autocast_copy_bytes": copies,
        "activation_bytes": activations,
        "per_layer_activation_bytes": per_layer,
        "transient_bytes": transients[transient_name], "transient_source": transient_name, "transients": transients,
        "additive_peak_bytes": additive,
        "additive_peak_gib": additive / GIB,
        "moments_bytes": moments,
        "peak_moment": at,
        "estimated_peak_bytes": moments[at],
        "estimated_peak_gib": moments[at] / GIB,
        "per_layer_bytes_per_position_ratio_short_over_long": short["per_layer_bytes_per_position"] / long["per_layer_bytes_per_position"],
    }


# ----------------------------------------------------------------------------- driver


def set_checkpointing(model, enabled: bool) -> None:
    from posttrain.models.loading import enable_activation_checkpointing

    if enabled:
        enable_activation_checkpointing(model)
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, vocabulary 1000, a few tokens: a check of the script")
    parser.add_argument("--layers", type=int, help="decoder layers to build (per-layer figures are extrapolated to the full depth)")
    parser.add_argument("--rows", type=int, help="rows per measured batch")
    parser.add_argument("--lengths", help="two comma-separated row lengths to measure (per-token linearity)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--target-positions", type=int, default=16384, help="positions of the estimated GPU step")
    parser.add_argument("--target-rows", type=int, default=8, help="rows of the estimated GPU step")
    parser.add_argument("--target-trained", type=int, help="trained tokens of the estimated GPU step (default: positions - rows)")
    parser.add_argument("--reuse", metavar="JSON", help="estimate from the measurements of an earlier --json file instead of measuring")
    parser.add_argument("--full-backward", action="store_true",
                        help="run the whole backward at the longer length (default: stop once the head's backward is done; the rest is not used)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    shape = TINY if args.tiny else QWEN2_5_0_5B
    args.shape = shape
    args.layers = args.layers or shape["num_hidden_layers"]
    args.rows = args.rows or (2 if args.tiny else 1)
    args.lengths = [int(x) for x in (args.lengths or ("24,48" if args.tiny else "256,512")).split(",")]
    args.configs = [c for c in args.configs.split(",") if c]
    args.layouts = [c for c in args.layouts.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS] + [c for c in args.layouts if c not in LAYOUTS]
    if unknown or len(args.lengths) != 2 or any(n % 2 for n in args.lengths) or args.layers < 2:
        # two layers at least: what several layers share (rotary tables, the mask) is told apart from a layer's own
        parser.error(f"unknown configs/layouts {unknown}, --lengths is not two even numbers, or --layers is under 2")
    return args


def _gib(value: float) -> str:
    return f"{value / GIB:6.2f}"


def print_report(report: dict) -> None:
    print(f"\nSaved for backward on CPU ({report['layers_built']} of {report['shape']['num_hidden_layers']} layers built; bytes per position)")
    print(f"{'config':13} {'ckpt':4} {'layout':6} {'T':>5} {'layer B/pos':>11} {'mask B/row/T^2':>14} {'other B/pos':>11} {'head B/tok':>10} {'copies MiB':>10} {'s fwd+bwd':>9}")
    for m in report["measurements"]:
        print(f"{m['config']:13} {'on' if m['checkpointing'] else 'off':4} {m['layout']:6} {m['length']:5} {m['per_layer_bytes_per_position']:11.0f} "
              f"{m['per_layer_t2_bytes_per_row_length_squared']:14.2f} {m['other_bytes_per_position']:11.0f} {m['head_bytes_per_trained_token']:10.0f} "
              f"{(m['layers'] * m['per_layer_autocast_copy_bytes'] + m['other_autocast_copy_bytes']) / 2**20:10.1f} "
              f"{m['seconds']['forward'] + (m['seconds']['backward'] or 0):9.1f}")
    target = report["target"]
    print(f"\nEstimated GPU peak, {target['positions']} positions in {target['rows']} rows ({report['note']})")
    print("GiB; params = weights + grads + AdamW (+ masters); additive = their sum + copies + acts + transient (the issue's formula);")
    print("peak = the largest moment (forward end, head backward, layer recompute, optimizer step), gradients counted from the backward on")
    print(f"{'config':13} {'ckpt':4} {'layout':6} {'params':>7} {'copies':>7} {'acts':>7} {'transient':>9} {'(source)':16} {'additive':>8} {'peak':>7} {'(moment)':15} {'issue':>6} {'lin':>5}")
    for e in report["estimates"]:
        params = sum(e["parameter_bytes"].values())
        issue_step = (target["positions"], target["rows"]) == (16384, 8)
        compare = e["config"] == "baseline" and not e["checkpointing"] and report["issue_measured_gib"] and issue_step
        issue = ISSUE_MEASURED_GIB.get(e["layout"]) if compare else None
        ratio = e["per_layer_bytes_per_position_ratio_short_over_long"]
        print(f"{e['config']:13} {'on' if e['checkpointing'] else 'off':4} {e['layout']:6} {_gib(params):>7} {_gib(e['autocast_copy_bytes']):>7} "
              f"{_gib(e['activation_bytes']):>7} {_gib(e['transient_bytes']):>9} {e['transient_source']:16} {e['additive_peak_gib']:8.2f} "
              f"{e['estimated_peak_gib']:7.2f} {e['peak_moment']:15} {issue if issue is not None else '':>6} {ratio:5.3f}")
    print(f"lin: per-layer bytes/position at T={report['lengths'][0]} over T={report['lengths'][1]}; issue: measured on an H200; "
          f"{report['seconds']:.0f} s in all")


def measure_all(args, chunk: int) -> tuple[list[dict], int]:
    """Every configuration, checkpointing setting, layout and length; and the full model's
    parameter count."""
    model = build_model(args.shape, args.layers)
    params = parameter_count(args.shape, model)
    measurements = []
    for config in args.configs:
        if config == "bf16_weights":
            model.to(torch.bfloat16)
        for checkpointing in (False, True):
            set_checkpointing(model, checkpointing)
            for layout in args.layouts:
                for length in args.lengths:
                    # the head in chunks at both lengths (a smaller chunk where the short one fits in one), so its
                    # per-token figure compares; its transient is measured at the longer length with the target's chunk
                    trained = args.rows * (length - (2 if layout == "packed" else 1))
                    measured_chunk = chunk if trained > chunk else max(1, trained // 2)
                    backward = "none" if length != args.lengths[-1] else "full" if args.full_backward else "head"
                    result = measure(model, config, checkpointing, layout, args.rows, length, measured_chunk, backward)
                    measurements.append(result)
                    print(f"measured {config} checkpointing={'on' if checkpointing else 'off'} {layout} T={length}: "
                          f"{result['per_layer_bytes_per_position']:.0f} B/position/layer, {result['seconds']}", file=sys.stderr, flush=True)
        set_checkpointing(model, False)
        model.to(torch.float32)
    return measurements, params


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from posttrain.ops import auto_chunk_size

    started = time.perf_counter()
    shape = args.shape
    vocab = shape["vocab_size"]
    target_trained = args.target_trained or args.target_positions - args.target_rows  # default: all but each row's first
    chunk = 16 if args.tiny else auto_chunk_size(target_trained, vocab) or target_trained  # --tiny: chunked all the same
    if args.reuse:
        with open(args.reuse) as handle:
            previous = json.load(handle)
        if previous["chunk_size"] != chunk or previous["shape"] != shape:
            raise SystemExit(f"{args.reuse} was measured with another model shape or head chunk ({previous['chunk_size']}, not {chunk})")
        measurements, params, args.layers = previous["measurements"], previous["parameters"], previous["layers_built"]
        args.configs = list(dict.fromkeys(m["config"] for m in measurements))
        args.layouts = list(dict.fromkeys(m["layout"] for m in measurements))
        args.lengths = sorted({m["length"] for m in measurements})
    else:
        measurements, params = measure_all(args, chunk)

    def find(config, checkpointing, layout, length):
        return next(m for m in measurements if (m["config"], m["checkpointing"], m["layout"], m["length"]) == (config, checkpointing, layout, length))

    target = {"positions": args.target_positions, "rows": args.target_rows, "trained_tokens": target_trained, "chunk_size": chunk}
    estimates = [
        estimate(find(config, checkpointing, layout, args.lengths[0]), find(config, checkpointing, layout, args.lengths[-1]),
                 find(config, False, layout, args.lengths[-1]), shape, params, target)
        for config in args.configs for layout in args.layouts for checkpointing in (False, True)
    ]
    report = {
        "note": "estimate from CPU accounting of saved tensors and live bytes, not a GPU measurement; CPU autocast's op lists differ slightly from CUDA's",
        "shape": shape, "layers_built": args.layers, "parameters": params, "chunk_size": chunk,
        "chunk_logits_float32_bytes": chunk * vocab * 4,
        "target": target,
        # what the issue measured on an H200 (baseline, checkpointing off), for the full-size model only
        "issue_measured_gib": None if args.tiny else {f"baseline_{layout}": gib for layout, gib in ISSUE_MEASURED_GIB.items()},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "lengths": args.lengths, "measurements": measurements, "estimates": estimates,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_report(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
