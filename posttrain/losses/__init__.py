"""Pure loss functions: tensors and scalar keywords in, per-example or per-token losses and
detached metrics out. Reduction to a scalar is :mod:`posttrain.losses.reduce`.

Imports only ``torch``, so data code, tests and tools can use it without ``accelerate``,
``peft`` or ``transformers``.
"""

from posttrain.losses.advantages import (
    ADVANTAGE_SCALES,
    GROUP_ADVANTAGES,
    gae,
    group_advantages,
    group_relative_advantages,
    leave_one_out_advantages,
    whiten_advantages,
)
from posttrain.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate
from posttrain.losses.kto import check_weight_ratio, kl_reference_point, kto_loss
from posttrain.losses.policy import (
    LOG_RATIO_LEVELS,
    POLICY_LOSSES,
    PolicyLossStats,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    log_importance_ratio,
    policy_loss,
    reinforce_policy_loss,
)
from posttrain.losses.preference import (
    PREFERENCE_LOSSES,
    PreferenceLogps,
    preference_loss,
    preference_metrics,
)
from posttrain.losses.reduce import AGGREGATIONS, LossSum, aggregate, sum_and_count
from posttrain.losses.reward import bradley_terry_loss
from posttrain.losses.sft import token_nll

__all__ = [
    "ADVANTAGE_SCALES",
    "GROUP_ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LOG_RATIO_LEVELS",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "LossSum",
    "PolicyLossStats",
    "PreferenceLogps",
    "aggregate",
    "bradley_terry_loss",
    "check_weight_ratio",
    "clipped_policy_loss",
    "clipped_value_loss",
    "explained_variance",
    "gae",
    "group_advantages",
    "group_relative_advantages",
    "kl_estimate",
    "kl_reference_point",
    "kto_loss",
    "leave_one_out_advantages",
    "log_importance_ratio",
    "policy_loss",
    "preference_loss",
    "preference_metrics",
    "reinforce_policy_loss",
    "sum_and_count",
    "token_nll",
    "whiten_advantages",
]
