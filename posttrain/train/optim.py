"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from posttrain.errors import ConfigError
from posttrain.train.master_weights import HALF, MasterWeightAdamW

ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


def adamw_flags(implementation: str, device_type: str) -> dict:
    """``fused``/``foreach`` arguments of ``torch.optim.AdamW`` for ``adamw_implementation``.

    ``auto``: fused on CUDA (one kernel for all parameters instead of a dozen per group),
    foreach elsewhere (on CPU both are memory-bound and foreach is what earlier runs used, so
    CPU results stay as they were). ``for_loop``: one parameter at a time (least memory).
    """
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"adamw_implementation must be one of {ADAMW_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        implementation = "fused" if device_type == "cuda" else "foreach"
    return {"fused": implementation == "fused", "foreach": implementation == "foreach"}


def _device_type(module: nn.Module) -> str:
    """Where the parameters will train: accelerate moves a CPU-loaded model to the GPU after the
    optimizer is made, so a visible GPU counts."""
    if torch.cuda.is_available():
        return "cuda"
    first = next(module.parameters(), None)
    return first.device.type if first is not None else "cpu"


def build_optimizer(module: nn.Module, config) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; weight decay only on matrices (decaying biases and norm
    gains pulls them towards zero for no benefit).

    16-bit trainable parameters get float32 master copies (:class:`MasterWeightAdamW`) unless
    ``config.master_weights`` is False; ``config.adamw_implementation`` picks fused, foreach or
    for-loop kernels (:func:`adamw_flags`)."""
    decay, no_decay = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    if not decay and not no_decay:
        raise ConfigError(
            "the model has no trainable parameters. Fix: leave its weights trainable (requires_grad=True), or train LoRA "
            "adapters (use_lora=true)"
        )
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    options = {
        "lr": config.learning_rate,
        "betas": (config.adam_beta1, config.adam_beta2),
        "eps": config.adam_epsilon,
        **adamw_flags(getattr(config, "adamw_implementation", "auto"), _device_type(module)),
    }
    groups = [g for g in groups if g["params"]]
    half = any(p.dtype in HALF for group in groups for p in group["params"])
    if half and getattr(config, "master_weights", True):
        if getattr(config, "mixed_precision", None) == "fp16":
            # fp16 loss scaling unscales and checks the gradients of the optimizer's parameters,
            # which here are the masters: the model's scaled 16-bit gradients would escape it.
            raise ConfigError(
                "mixed_precision=fp16 cannot scale the loss of a 16-bit model trained through float32 master weights. "
                "Fix: mixed_precision=bf16 with model_dtype=bfloat16, or model_dtype=float32 with fp16"
            )
        return MasterWeightAdamW(groups, **options)
    if any(p.dtype == torch.float16 for group in groups for p in group["params"]):
        # AdamW's second moment (squared gradients) and its epsilon underflow in float16: the
        # update divides by zero within a step or two.
        raise ConfigError(
            "AdamW cannot keep its state in float16 (squared gradients and epsilon underflow to 0, the loss turns NaN). "
            "Fix: master_weights=true (float32 copies), or model_dtype=bfloat16"
        )
    return torch.optim.AdamW(groups, **options)


def warmup_steps(config, total_steps: int) -> int:
    if config.warmup_steps > 0:
        return config.warmup_steps
    return math.ceil(config.warmup_ratio * total_steps)


def build_scheduler(optimizer, config, total_steps: int):
    """A transformers schedule (``config.lr_scheduler``) with warm-up, stepped once per
    optimizer step."""
    from transformers import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(config, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(getattr(config, "lr_scheduler_kwargs", None) or {}) or None,
    )
