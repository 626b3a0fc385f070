"""posttrain: post-training for language models on PyTorch and the Hugging Face stack.

Public API (imported lazily, so ``import posttrain`` stays cheap)::

    from posttrain import SFTTrainer, SFTConfig, RewardTrainer, DPOTrainer, KTOTrainer, GRPOTrainer, PPOTrainer
"""

from __future__ import annotations

import importlib

from posttrain.registry import exports

__version__ = "0.1.0"

# every algorithm's trainer and config (posttrain.registry), and the config base
_EXPORTS = {**exports(), "TrainConfig": "posttrain.config", "load_config": "posttrain.config"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'posttrain' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
