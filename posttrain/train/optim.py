"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from posttrain.errors import ConfigError


def build_optimizer(module: nn.Module, config) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; weight decay only on matrices (decaying biases and norm
    gains pulls them towards zero for no benefit)."""
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
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        foreach=True,
    )


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
    )
