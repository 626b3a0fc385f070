"""Reward functions: calling them, checking what they return, and combining them.

**The contract.** A reward function is a callable
``fn(prompts, completions, **columns) -> list[float | None]``, one value per completion:

- ``prompts``: the prompt of each completion (repeated for the generations of one prompt);
- ``completions``: strings for string prompts; for message-list prompts a one-message list
  ``[{"role": "assistant", "content": text}]``, as TRL passes them (decided per row); for a
  multi-turn episode with tools, every message after the prompt (assistant turns with their
  ``tool_calls``, tool results), the answer last;
- every other column of the prompt rows by its name (a list aligned with the completions), and
  ``completion_ids`` (the generated token ids, stop token included), and ``environments`` (each
  episode's environment, with ``environment_factory``);
- ``None`` means "does not apply to this row" (e.g. a math verifier on a code row).

A function receives only the arguments it names, unless it takes ``**kwargs``, which gets them
all. Named parameters without a default (other than ``prompts``, ``completions`` and
``completion_ids``) must be columns, and a callable may list more in a ``required_columns``
attribute (the built-ins do): :meth:`RewardFunctions.check_columns` checks this before the
first generation.

**Combining.** ``total = sum_f weight_f * reward_f`` over the functions that apply to the
row. When none applies, ``no_reward="error"`` (default) stops the run naming the row, since a
row without any reward carries no signal and usually means a missing verifier;
``no_reward="zero"`` gives it 0 and counts the share in ``rewards/no_reward_share``.

**Faults stop the run.** A function that raises, returns something that is not a list of the
right length, or a value that is not a finite number or None, raises
:class:`RewardFunctionError` with its name, the problem and one sample (prompt, completion).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from posttrain.data.prompts import is_conversational
from posttrain.errors import ConfigError, DataError, UserError

# The built-ins and the config resolver live beside this module; re-exported here.
from posttrain.rollout.builtin_rewards import (
    RewardModelFunction,
    exact_answer,
    format_regex,
    math_verify_accuracy,
    reward_model_function,
)
from posttrain.rollout.reward_spec import BUILTIN_REWARDS, resolve_reward_funcs

# Arguments every reward function may receive besides the dataset's columns.
STANDARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "environments")
NO_REWARD_POLICIES = ("error", "zero")


class RewardFunctionError(UserError, RuntimeError):
    """A reward function failed or returned something unusable (its name, the problem and a sample)."""


def _shorten(value, limit: int = 300) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _sample(prompts: Sequence, completions: Sequence, row: int) -> str:
    return f"row {row}: prompt={_shorten(prompts[row])}, completion={_shorten(completions[row])}"


def reward_name(fn) -> str:
    """``fn.__name__``, else the wrapped function's (``functools.partial``), else the class name."""
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name:
        name = type(fn).__name__
    return "lambda" if name == "<lambda>" else name


@dataclass(frozen=True)
class _Signature:
    """What a reward function accepts: the names it takes and the columns it needs."""

    takes_all: bool
    names: frozenset[str]
    required_columns: tuple[str, ...]
    required_environments: bool = False  # names ``environments`` without a default


def _signature(fn, name: str) -> _Signature:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as exc:
        raise RewardFunctionError(f"reward function '{name}': cannot read its signature ({exc})") from exc
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    named = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    positional_only = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty]
    if positional_only:
        raise RewardFunctionError(
            f"reward function '{name}': positional-only parameters {positional_only} cannot be passed by name. "
            "Fix: name them prompts / completions / completion_ids or a dataset column"
        )
    required = [p.name for p in named if p.default is p.empty and p.name not in STANDARD_ARGUMENTS]
    required += [c for c in getattr(fn, "required_columns", ()) if c not in required]
    needs_environments = any(p.name == "environments" and p.default is p.empty for p in named)
    return _Signature(takes_all, frozenset(p.name for p in named), tuple(required), needs_environments)


@dataclass
class RewardResult:
    """Rewards of ``N`` completions from ``F`` functions.

    Attributes:
        total: ``(N,)`` float32, the weighted sum over the functions that apply to each row.
        per_function: ``(N, F)`` float32, unweighted, NaN where a function returned None.
        names: the ``F`` function names, in column order.
        metrics: ``rewards/<name>/mean`` and ``/std`` (population std over the rows it applies
            to; left out when it applies to none), ``rewards/<name>/applied`` (share of rows it
            applies to), ``reward`` and ``reward_std`` of ``total``, and
            ``rewards/no_reward_share`` under ``no_reward="zero"``.
    """

    total: torch.Tensor
    per_function: torch.Tensor
    names: list[str]
    metrics: dict[str, float]


class RewardFunctions:
    """Several reward functions combined with weights.

    Args:
        funcs: reward functions, or anything :func:`~posttrain.rollout.reward_spec.resolve_reward_funcs`
            accepts (a built-in name, a ``{name: ..., option: ...}`` mapping, ``module:function``,
            a reward model directory, a ``RewardScorer``); one or a list.
        weights: one finite number per function; default 1 each.
        names: metric names; default :func:`reward_name`, with ``_2``, ``_3``... added to repeats.
        no_reward: ``"error"`` or ``"zero"``: what a row to which no function applies gets.
    """

    def __init__(self, funcs, weights: Sequence[float] | None = None, names: Sequence[str] | None = None, no_reward: str = "error"):
        self.funcs: list[Callable] = resolve_reward_funcs(funcs)
        self.weights = _check_weights(weights, len(self.funcs))
        self.names = _unique_names(names if names is not None else [reward_name(f) for f in self.funcs], len(self.funcs))
        if no_reward not in NO_REWARD_POLICIES:
            raise ConfigError(f"no_reward must be one of {NO_REWARD_POLICIES}, got {no_reward!r}")
        self.no_reward = no_reward
        self._signatures = [_signature(f, n) for f, n in zip(self.funcs, self.names)]

    def __len__(self) -> int:
        return len(self.funcs)

    def check_columns(self, column_names, environments: bool = False) -> None:
        """Fail before any generation when a function needs a column the prompt rows lack, or
        the episodes' environments when there are none.

        ``column_names``: the keys of the prompt rows (``prompt`` itself is given as ``prompts``);
        ``environments``: whether the rollouts have environments (``environment_factory``).
        """
        for name, signature in zip(self.names, self._signatures):
            if signature.required_environments and not environments:
                raise ConfigError(
                    f"reward function '{name}' reads the episodes' environments, and there are none. Fix: set "
                    "environment_factory (an environment per episode), or give the parameter a default"
                )
        columns = [c for c in column_names if c != "prompt"]
        clashes = [c for c in columns if c in STANDARD_ARGUMENTS]
        if clashes:
            raise DataError(
                f"dataset column(s) {clashes} clash with the arguments every reward function receives "
                f"({', '.join(STANDARD_ARGUMENTS)}). Fix: rename the column(s)"
            )
        for name, signature in zip(self.names, self._signatures):
            for column in signature.required_columns:
                if column not in columns:
                    raise DataError(
                        f"reward function '{name}' needs the column '{column}', which the prompt rows do not have "
                        f"(columns: {sorted(columns) or 'none besides prompt'}). Fix: add '{column}' to every prompt row, "
                        "point the function at an existing column, or give that parameter a default"
                    )

    def __call__(
        self, prompts: Sequence, completions: Sequence, completion_ids: Sequence[Sequence[int]], columns: Mapping[str, Sequence] | None = None,
        environments: Sequence | None = None,
    ) -> RewardResult:
        """Score ``N`` completions (texts, or the messages of multi-turn episodes) of ``prompts``
        with every function and combine; ``environments``: the episodes' environments, if any."""
        columns = dict(columns or {})
        columns.pop("prompt", None)
        _check_lengths(prompts, completions, completion_ids, columns)
        self.check_columns(columns, environments=environments is not None)
        shown = [
            [{"role": "assistant", "content": c}] if is_conversational(p) and isinstance(c, str) else c
            for p, c in zip(prompts, completions)
        ]
        arguments = {"prompts": list(prompts), "completions": shown, "completion_ids": [list(i) for i in completion_ids], **columns}
        if environments is not None:
            arguments["environments"] = list(environments)
        values = [self._run(index, arguments, prompts, completions) for index in range(len(self.funcs))]
        per_function = torch.tensor(values, dtype=torch.float64).reshape(len(self.funcs), len(prompts)).T
        return self._combine(per_function, prompts, completions)

    def _run(self, index: int, arguments: dict, prompts, completions) -> list[float]:
        fn, name, signature = self.funcs[index], self.names[index], self._signatures[index]
        kwargs = arguments if signature.takes_all else {k: v for k, v in arguments.items() if k in signature.names}
        try:
            output = fn(**kwargs)
        except Exception as exc:
            raise RewardFunctionError(
                f"reward function '{name}' raised {type(exc).__name__}: {exc}. Sample {_sample(prompts, completions, 0)}"
            ) from exc
        return _check_output(name, output, prompts, completions)

    def _combine(self, per_function: torch.Tensor, prompts, completions) -> RewardResult:
        applies = ~torch.isnan(per_function)  # (N, F)
        weights = torch.tensor(self.weights, dtype=torch.float64)
        total = torch.where(applies, per_function * weights, torch.zeros_like(per_function)).sum(dim=1)
        no_reward = ~applies.any(dim=1)
        metrics = {}
        if bool(no_reward.any()):
            if self.no_reward == "error":
                row = int(no_reward.nonzero()[0])
                raise RewardFunctionError(
                    f"no reward function applies to {int(no_reward.sum())} of {len(prompts)} rows: all of {self.names} "
                    f"returned None. Sample {_sample(prompts, completions, row)}. Fix: make at least one function "
                    "return a number for every row, or set no_reward='zero' to give such rows 0"
                )
        if self.no_reward == "zero":
            metrics["rewards/no_reward_share"] = float(no_reward.double().mean())
        for column, name in enumerate(self.names):
            metrics.update(_function_metrics(name, per_function[:, column]))
        metrics["reward"] = float(total.mean())
        metrics["reward_std"] = float(total.std(correction=0))
        return RewardResult(total.float(), per_function.float(), list(self.names), metrics)


def _function_metrics(name: str, values: torch.Tensor) -> dict[str, float]:
    applied = values[~torch.isnan(values)]
    metrics = {f"rewards/{name}/applied": applied.numel() / max(values.numel(), 1)}
    if applied.numel():
        metrics[f"rewards/{name}/mean"] = float(applied.mean())
        metrics[f"rewards/{name}/std"] = float(applied.std(correction=0))
    return metrics


def _check_weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = list(weights)
    if len(weights) != count:
        raise ConfigError(f"reward_weights has {len(weights)} values for {count} reward functions; give one weight per function")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise ConfigError(f"reward_weights must be finite numbers, got {weight!r} in {weights}")
    return [float(w) for w in weights]


def _unique_names(names: Sequence[str], count: int) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{len(names)} names for {count} reward functions")
    unique: list[str] = []
    for name in names:
        candidate, suffix = name, 2
        while candidate in unique:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        unique.append(candidate)
    return unique


def _check_lengths(prompts, completions, completion_ids, columns: Mapping) -> None:
    n = len(prompts)
    lengths = {"completions": len(completions), "completion_ids": len(completion_ids)}
    lengths.update({f"column '{k}'": len(v) for k, v in columns.items()})
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise ValueError(f"{n} prompts but {wrong}: every argument must hold one entry per completion")


def _as_list(output):
    if isinstance(output, torch.Tensor):
        return output.detach().cpu().tolist() if output.dim() == 1 else output
    if type(output).__module__ == "numpy" and hasattr(output, "tolist") and getattr(output, "ndim", 0) == 1:
        return output.tolist()
    return output


def _check_output(name: str, output, prompts, completions) -> list[float]:
    """The function's values as floats (NaN for None); anything else is a :class:`RewardFunctionError`."""
    output = _as_list(output)
    n = len(prompts)
    if not isinstance(output, (list, tuple)):
        shape = getattr(output, "shape", None)
        kind = type(output).__name__
        shown = f"a {kind} of shape {tuple(shape)}" if shape is not None else f"{_shorten(output, 100)} ({kind})"
        raise RewardFunctionError(
            f"reward function '{name}' returned {shown}; expected a list of "
            f"{n} numbers or None, one per completion. Sample {_sample(prompts, completions, 0)}"
        )
    if len(output) != n:
        raise RewardFunctionError(
            f"reward function '{name}' returned {len(output)} values for {n} completions; expected one per completion. "
            f"Sample {_sample(prompts, completions, 0)}"
        )
    values = []
    for row, value in enumerate(output):
        if value is None:
            values.append(math.nan)
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real):
            raise RewardFunctionError(
                f"reward function '{name}' returned {_shorten(value, 100)} ({type(value).__name__}) for row {row}; "
                f"expected a number or None. Sample {_sample(prompts, completions, row)}"
            )
        if not math.isfinite(value):
            raise RewardFunctionError(
                f"reward function '{name}' returned {value} for row {row}; rewards must be finite (None = does not "
                f"apply). Sample {_sample(prompts, completions, row)}"
            )
        values.append(float(value))
    return values


__all__ = [
    "BUILTIN_REWARDS",
    "RewardFunctionError",
    "RewardFunctions",
    "RewardModelFunction",
    "RewardResult",
    "exact_answer",
    "format_regex",
    "math_verify_accuracy",
    "resolve_reward_funcs",
    "reward_model_function",
    "reward_name",
]
