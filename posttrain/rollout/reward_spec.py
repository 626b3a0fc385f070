"""Reward functions from a config: what the CLI's YAML ``reward_funcs`` list may hold.

Each item is one of::

    - exact_answer                          # a built-in with its default options
    - {name: format_regex, pattern: "<think>.*</think>\\s*<answer>.*</answer>"}
    - {name: reward_model, path: outputs/rm/final, max_length: 512}
    - my_package.rewards:length_penalty     # module:function, imported
    - rewards/custom.py:my_reward           # a Python file:function, loaded
    - outputs/rm/final                      # an existing directory: a reward model

and, from Python, also a callable (used as is) or a ``RewardScorer``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from posttrain.errors import ConfigError
from posttrain.rollout.builtin_rewards import (
    exact_answer,
    format_regex,
    math_verify_accuracy,
    missing_package_message,
    reward_model_function,
)

BUILTIN_REWARDS: dict[str, Callable] = {
    "exact_answer": exact_answer,
    "format_regex": format_regex,
    "math_verify_accuracy": math_verify_accuracy,
    "reward_model": reward_model_function,
}
# Option names in a config that differ from the factory's parameter names.
_ALIASES = {"reward_model": {"path": "model_or_path"}}

_FORMS = (
    f"a built-in name ({', '.join(BUILTIN_REWARDS)}), a mapping {{name: <built-in>, <option>: ...}}, "
    "'module:function', 'path/to/file.py:function', or a reward model directory"
)


def _options_of(name: str) -> str:
    config_name = {parameter: option for option, parameter in _ALIASES.get(name, {}).items()}
    return ", ".join(config_name.get(p, p) for p in inspect.signature(BUILTIN_REWARDS[name]).parameters)


def _build(name: str, options: Mapping, where: str):
    aliases = _ALIASES.get(name, {})
    arguments = {aliases.get(key, key): value for key, value in options.items()}
    try:
        inspect.signature(BUILTIN_REWARDS[name]).bind(**arguments)
    except TypeError as exc:
        raise ConfigError(
            f"{where}: built-in reward '{name}' cannot be built from options {dict(options)} ({exc}). "
            f"Its options: {_options_of(name)}"
        ) from exc
    return BUILTIN_REWARDS[name](**arguments)


def _load_file(path: Path, where: str, what: str):
    if not path.is_file():
        raise ConfigError(f"{where}: {what} file {str(path)!r} does not exist (relative paths start at {os.getcwd()})")
    module_name = f"posttrain_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_path(text: str, where: str, what: str = "reward") -> Callable:
    """The callable ``text`` names: ``'module:attribute'`` (imported) or
    ``'path/to/file.py:attribute'`` (loaded from the file); ``attribute`` may be dotted. Reward
    functions, tools and environment classes are given this way in a config; ``where`` (the
    option) and ``what`` name them in errors."""
    location, _, attribute = text.rpartition(":")
    if not location or not attribute:
        raise ConfigError(f"{where}: {text!r} is not 'module:function' or 'path/to/file.py:function'")
    if location.endswith(".py") or os.sep in location or "/" in location:
        module = _load_file(Path(location), where, what)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import module {location!r} for {what} {text!r} ({exc})") from exc
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{where}: {location!r} has no attribute {attribute!r} ({what} {text!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{where}: {text!r} is a {type(target).__name__}, not callable (a {what} must be)")
    return target


def _from_string(text: str, where: str) -> Callable:
    if text in BUILTIN_REWARDS:
        return _build(text, {}, where)
    if os.path.isdir(text):
        return reward_model_function(text)
    if ":" in text:
        return import_path(text, where)
    raise ConfigError(f"{where}: unknown reward {text!r}. A reward is {_FORMS}")


def _from_mapping(item: Mapping, where: str) -> Callable:
    options = dict(item)
    name = options.pop("name", None)
    if name not in BUILTIN_REWARDS:
        if isinstance(name, str) and not options:
            return _from_string(name, where)
        raise ConfigError(
            f"{where}: options are for built-in rewards; 'name' must be one of {list(BUILTIN_REWARDS)}, got {name!r} "
            f"with options {options}. A reward is {_FORMS}"
        )
    return _build(name, options, where)


def resolve_reward_func(item, index: int = 0) -> Callable:
    """One reward function from one spec item (see the module docstring)."""
    from torch import nn

    from posttrain.models.reward import RewardScorer

    where = f"reward_funcs[{index}]"
    if isinstance(item, RewardScorer):
        return reward_model_function(item)
    if isinstance(item, nn.Module):
        raise ConfigError(
            f"{where}: a model object is not a reward function. Fix: reward_model_function(model, tokenizer) "
            "for a reward model (sequence classifier), or pass a function"
        )
    if isinstance(item, str):
        return _from_string(item, where)
    if isinstance(item, Mapping):
        return _from_mapping(item, where)
    if callable(item):
        return item
    raise ConfigError(f"{where}: {type(item).__name__} {item!r:.100} is not a reward. A reward is {_FORMS}")


def resolve_reward_funcs(spec) -> list[Callable]:
    """Reward functions from a list of spec items (or a single item), in order."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise ConfigError(f"no reward functions given; give at least one: {_FORMS}")
    return [resolve_reward_func(item, index) for index, item in enumerate(items)]


def check_reward_packages(spec) -> None:
    """Refuse reward specs whose built-ins need a package that is not installed, before any
    model loads (``reward_funcs: [math_verify_accuracy]`` without math-verify)."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else item if isinstance(item, str) else None
        problem = missing_package_message(name) if isinstance(name, str) else None
        if problem is not None:
            raise ConfigError(f"reward_funcs[{index}]: {problem}")
