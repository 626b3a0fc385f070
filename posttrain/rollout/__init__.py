"""Rollouts for online RL (and greedy evaluation): a generation engine behind a small interface,
and reward functions. Prompts are encoded by :mod:`posttrain.data.prompts` (re-exported here).

- :mod:`~posttrain.rollout.sampling`: :class:`SamplingOptions`, :class:`Completion`.
- :mod:`~posttrain.rollout.engine`: the :class:`RolloutEngine` interface, :class:`GenerationStats`.
- :mod:`~posttrain.rollout.generation`: :class:`HFGenerationEngine` (``transformers`` ``generate``).
- :mod:`~posttrain.rollout.rewards`: :class:`RewardFunctions` and the reward-function contract;
  built-ins in :mod:`~posttrain.rollout.builtin_rewards`, config specs in
  :mod:`~posttrain.rollout.reward_spec`.
"""

from posttrain.data.prompts import encode_prompt, encode_prompts
from posttrain.rollout.engine import GenerationStats, RolloutEngine
from posttrain.rollout.generation import HFGenerationEngine
from posttrain.rollout.rewards import (
    BUILTIN_REWARDS,
    RewardFunctionError,
    RewardFunctions,
    RewardModelFunction,
    RewardResult,
    exact_answer,
    format_regex,
    math_verify_accuracy,
    resolve_reward_funcs,
    reward_model_function,
)
from posttrain.rollout.sampling import Completion, SamplingOptions

__all__ = [
    "BUILTIN_REWARDS",
    "Completion",
    "GenerationStats",
    "HFGenerationEngine",
    "RewardFunctionError",
    "RewardFunctions",
    "RewardModelFunction",
    "RewardResult",
    "RolloutEngine",
    "SamplingOptions",
    "encode_prompt",
    "encode_prompts",
    "exact_answer",
    "format_regex",
    "math_verify_accuracy",
    "resolve_reward_funcs",
    "reward_model_function",
]
