"""Pure loss functions: tensors and scalar keywords in, per-example or per-token losses and
detached metrics out. Reduction to a scalar is :mod:`posttrain.losses.reduce`.

Imports only ``torch``, so data code, tests and tools can use it without ``accelerate``,
``peft`` or ``transformers``.
"""

from posttrain.losses.kto import check_weight_ratio, kl_reference_point, kto_loss
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
    "AGGREGATIONS",
    "PREFERENCE_LOSSES",
    "LossSum",
    "PreferenceLogps",
    "aggregate",
    "bradley_terry_loss",
    "check_weight_ratio",
    "kl_reference_point",
    "kto_loss",
    "preference_loss",
    "preference_metrics",
    "sum_and_count",
    "token_nll",
]
