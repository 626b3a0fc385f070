"""posttrain: post-training for language models on PyTorch and the Hugging Face stack.

Public API (imported lazily, so ``import posttrain`` stays cheap)::

    from posttrain import SFTTrainer, SFTConfig, RewardTrainer, DPOTrainer, KTOTrainer, GRPOTrainer, PPOTrainer
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SFTTrainer": "posttrain.algorithms.sft",
    "SFTConfig": "posttrain.algorithms.sft",
    "RewardTrainer": "posttrain.algorithms.reward",
    "RewardConfig": "posttrain.algorithms.reward",
    "DPOTrainer": "posttrain.algorithms.dpo",
    "DPOConfig": "posttrain.algorithms.dpo",
    "KTOTrainer": "posttrain.algorithms.kto",
    "KTOConfig": "posttrain.algorithms.kto",
    "GRPOTrainer": "posttrain.algorithms.grpo",
    "GRPOConfig": "posttrain.algorithms.grpo",
    "PPOTrainer": "posttrain.algorithms.ppo",
    "PPOConfig": "posttrain.algorithms.ppo",
    "TrainConfig": "posttrain.config",
    "load_config": "posttrain.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'posttrain' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
