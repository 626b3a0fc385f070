"""Declaring options and checking their values, in one place for every config.

A config field is declared with :func:`option`: its default, its help text and, where it has
one, its allowed ``range`` (``"[0, 1)"``, ``"(0, inf)"``) or its ``choices``. Every config's
``__post_init__`` calls :func:`validate_config`, which

1. converts each value to the field's declared type (``"3e-4"`` -> ``0.0003``) or refuses it
   naming the option and the type it needs;
2. checks each declared range and set of choices, naming the option, the allowed values and
   what the option means;
3. refuses combinations of options that contradict each other or this machine
   (:data:`RULES`).

A subclass that re-declares a field (``learning_rate`` with another default) keeps the range
declared on its base class unless it declares its own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """An interval such as ``[0, 1)``: ``low``/``high`` may be infinite."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Range:
        match = re.fullmatch(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*", text)
        if match is None:
            raise ValueError(f"range {text!r} is not of the form '[low, high)' (use inf for no bound)")
        opening, low, high, closing = match.groups()
        return cls(float(low), float(high), opening == "[", closing == "]", f"{opening}{low}, {high}{closing}")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below


def option(default: Any, help: str, *, range: str | None = None, choices: tuple | None = None, **kwargs) -> Any:  # noqa: A002 - "help" and "range" read best here
    """A dataclass field with documentation and, optionally, its allowed ``range`` or ``choices``;
    lists/dicts get a copy per instance."""
    metadata = {"help": help}
    if range is not None:
        metadata["range"] = Range.parse(range)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


# ----------------------------------------------------------------------------- types

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping", list: "a list"}


def type_name(annotation: Any) -> str:
    """How an option's type reads in a message: ``an integer or null``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if t is type(None) else type_name(t) for t in typing.get_args(annotation))
    if origin in (list, tuple) or annotation in (list, tuple):
        return "a list"
    return _TYPE_NAMES.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI/Python value to ``annotation`` (int, float, bool, str, lists,
    optionals); raises :class:`ConfigError` naming option ``name`` and the type it needs."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option_type in options:
            if option_type is type(None):
                continue
            try:
                return coerce(value, option_type, name)
            except ConfigError:
                continue
        raise _wrong_type(name, annotation, value)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(name, annotation, value)
        args = typing.get_args(annotation)
        return [coerce(v, args[0], name) for v in value] if args else list(value)
    converter = _SCALARS.get(annotation)
    if converter is not None:
        converted = converter(value)
        if converted is _REFUSED:
            raise _wrong_type(name, annotation, value)
        return converted
    if (origin is dict or annotation is dict) and not isinstance(value, dict):
        raise _wrong_type(name, annotation, value)
    return value


_REFUSED = object()


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    return _REFUSED


def _to_int(value):
    if isinstance(value, bool):
        return _REFUSED
    if isinstance(value, int):
        return value
    number = _to_float(value)
    return int(number) if number is not _REFUSED and math.isfinite(number) and number.is_integer() else _REFUSED


def _to_float(value):
    if isinstance(value, bool):
        return _REFUSED
    try:
        return float(value) if isinstance(value, (int, float, str)) else _REFUSED
    except ValueError:
        return _REFUSED


def _to_str(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else _REFUSED


_SCALARS: dict[Any, Callable] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _wrong_type(name: str, annotation: Any, value: Any) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 and "\n" not in shown else f"a {type(value).__name__} object"  # not a model's whole repr
    return ConfigError(f"option {name!r} must be {type_name(annotation)}, got {shown} ({type(value).__name__})")


# ----------------------------------------------------------------------------- validation


@functools.cache
def field_rules(config_cls: type) -> dict[str, dict]:
    """``{field: metadata}``, a field re-declared without a range keeping its base's."""
    rules: dict[str, dict] = {}
    for klass in reversed(config_cls.__mro__):
        for f in getattr(klass, "__dataclass_fields__", {}).values():
            declared = {k: f.metadata[k] for k in ("range", "choices", "help") if k in f.metadata}
            rules[f.name] = {**rules.get(f.name, {}), **declared}
    return rules


@functools.cache
def _type_hints(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def validate_config(config) -> None:
    """Convert every option of ``config`` to its type, check its range/choices and the rules
    between options; raise :class:`ConfigError` at the first problem."""
    hints = _type_hints(type(config))
    rules = field_rules(type(config))
    for f in dataclasses.fields(config):
        name = f.name
        value = coerce(getattr(config, name), hints.get(name, Any), name)
        if value is not getattr(config, name):
            setattr(config, name, value)
        _check_declared(name, value, rules.get(name, {}))
    for rule in (*RULES, *getattr(type(config), "config_rules", ())):
        rule(config)


def require(*checks: tuple[bool, str]) -> None:
    """Raise :class:`ConfigError` with the message of the first ``(condition, message)`` that
    does not hold (a config's own checks between its options)."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_declared(name: str, value: Any, rule: dict) -> None:
    meaning = f" ({rule['help']})" if rule.get("help") else ""
    allowed = rule.get("range")
    if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value not in allowed:
        raise ConfigError(f"option {name!r} must be in {allowed.text}, got {value!r}{meaning}")
    choices = rule.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"option {name!r} must be one of {', '.join(map(str, choices))}; got {value!r}{meaning}")


# ----------------------------------------------------------------------------- rules between options


def _one_layout(config) -> None:
    if getattr(config, "packing", False) and getattr(config, "padding_free", False):
        raise ConfigError("options 'packing' and 'padding_free' are two batch layouts; set only one of them to true")
    if getattr(config, "packing", False) and getattr(config, "max_length", 0) is None:
        raise ConfigError("option 'packing' needs 'max_length' (the capacity of a packed row); set max_length to a number")


def _fp16_needs_a_gpu(config) -> None:
    if getattr(config, "mixed_precision", None) != "fp16":
        return
    import torch  # only asked when fp16 is: the config module stays light otherwise

    if not (torch.cuda.is_available() or _has_other_gpu(torch)):
        raise ConfigError(
            "option 'mixed_precision' is fp16, but this machine has no GPU: fp16 mixed precision runs only on "
            "GPUs, and on a CPU the run would silently train in fp32. Use mixed_precision=no (or bf16, which CPUs run)"
        )


def _has_other_gpu(torch) -> bool:
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu is not None and xpu.is_available()) or (mps is not None and mps.is_available()))


_PLAIN_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")
_SCHEDULES_WITH_ARGUMENTS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
_METRIC_SCHEDULES = ("reduce_lr_on_plateau", "greedy")


def _schedule_builds(config) -> None:
    """A schedule name (and its lr_scheduler_kwargs) that transformers can build over steps:
    checked when the config is made, not after the model has loaded."""
    name = getattr(config, "lr_scheduler", None)
    arguments = getattr(config, "lr_scheduler_kwargs", None) or {}
    if name is None or (name in _PLAIN_SCHEDULES and not arguments):
        return
    if name in _METRIC_SCHEDULES:
        raise ConfigError(f"option 'lr_scheduler': {name} steps on an evaluation metric, which no trainer here feeds it; choose one over steps: {', '.join(_PLAIN_SCHEDULES)}")
    if name not in _PLAIN_SCHEDULES + _SCHEDULES_WITH_ARGUMENTS:
        import difflib

        close = difflib.get_close_matches(str(name), _PLAIN_SCHEDULES + _SCHEDULES_WITH_ARGUMENTS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"option 'lr_scheduler': unknown schedule {name!r}; {hint}choose from {', '.join(_PLAIN_SCHEDULES + _SCHEDULES_WITH_ARGUMENTS)}")
    import torch
    from transformers import get_scheduler

    parameter = torch.zeros(1, requires_grad=True)
    try:  # built once on a dummy optimizer: a missing or wrong argument shows now
        get_scheduler(name, optimizer=torch.optim.SGD([parameter], lr=1.0), num_warmup_steps=0, num_training_steps=10, scheduler_specific_kwargs=dict(arguments))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"option 'lr_scheduler': {name} cannot be built with lr_scheduler_kwargs={dict(arguments)} ({error})") from None


def fsdp_conflict(config) -> str | None:
    """What in ``config`` cannot be combined with sharding (FSDP2), or None."""
    if getattr(config, "model_dtype", "float32") != "float32":
        return (
            f"fsdp keeps float32 shards as the master weights and computes in the mixed_precision dtype; model_dtype "
            f"{config.model_dtype!r} cannot be sharded that way. Fix: model_dtype=float32 with mixed_precision=bf16"
        )
    if getattr(config, "torch_compile", False):
        return "fsdp and torch_compile have not been run together here. Fix: torch_compile=false with fsdp"
    return None


def _fsdp_combinations(config) -> None:
    problem = fsdp_conflict(config) if getattr(config, "fsdp", False) else None
    if problem:
        raise ConfigError(f"option 'fsdp': {problem}")


# Rules that involve more than one option (or the machine), for every config. A config class
# adds its own as ``config_rules: ClassVar[tuple] = (rule, ...)``.
RULES: list[Callable] = [_one_layout, _fp16_needs_a_gpu, _schedule_builds, _fsdp_combinations]
