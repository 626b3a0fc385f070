"""Tools the model may call, and environments whose public methods are the tools of one episode.

**A tool** is a Python callable with type hints and a Google-style docstring (a one-line summary
and an ``Args:`` section describing every parameter), as transformers' ``apply_chat_template(...,
tools=...)`` expects: :func:`tool_schema` turns it into the JSON schema the chat template renders,
with ``transformers.utils.get_json_schema``, and refuses a callable it cannot describe with a
message saying what to add. Coroutine functions (``async def``) are tools too.

**An environment** (``environment_factory=``: a class or any callable returning an object) is
built once per episode, so every rollout has its own state:

- its public methods (names not starting with ``_``, other than ``reset``) are that episode's
  tools, described like functions (``self`` left out);
- ``reset(**columns)``, when defined, is called before the first turn with the prompt row's
  columns that it names (all of them if it takes ``**kwargs``); it must return None (the task is
  the prompt's to state);
- setting ``done = True`` (an attribute) ends the episode after the current round of tool calls;
- reward functions receive the episodes' environments (``environments=``), so they can read the
  state the episode left.

The tools of an episode are a :class:`Toolbox`: the plain tools (shared by every episode,
stateless) and the environment's methods, names unique across both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from posttrain.errors import ConfigError
from posttrain.rollout.reward_spec import import_path


class ToolError(ConfigError):
    """A tool or environment that cannot be used as given (not a failure of a call: those are
    data, see :mod:`posttrain.rollout.agents.execution`)."""


def callable_name(fn) -> str:
    """A readable name for error messages: ``fn.__name__``, else the type's name."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__


def tool_schema(fn: Callable) -> dict:
    """The JSON schema of ``fn`` as chat templates take it: ``{"type": "function", "function":
    {"name", "description", "parameters", ...}}`` (transformers' ``get_json_schema``).

    Raises :class:`ToolError` naming the callable and the fix when it has no docstring, a
    parameter without a type hint or without a description, or is not a plain function or method
    (a ``functools.partial`` or an object with ``__call__``: wrap it in a ``def``)."""
    from transformers.utils import get_json_schema
    from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException

    name = callable_name(fn)
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        raise ToolError(
            f"tool {name!r} is a {type(fn).__name__}, not a function or method, so its parameters cannot be described. "
            "Fix: wrap it in a def with type hints and a docstring"
        )
    try:
        return get_json_schema(fn)
    except (DocstringParsingException, TypeHintParsingException) as exc:
        raise ToolError(
            f"tool {name!r} cannot be described to the model: {exc}. Fix: give it type hints on every parameter and a "
            "docstring with a one-line summary and an 'Args:' section describing each parameter"
        ) from exc


@dataclass(frozen=True)
class Tool:
    """One callable tool: its ``name`` (what the model writes), the ``function`` to call and its
    ``schema`` (:func:`tool_schema`)."""

    name: str
    function: Callable
    schema: dict

    @classmethod
    def of(cls, fn: Callable) -> Tool:
        if inspect.ismethod(fn):  # one description per method of a class, not per environment
            key = fn.__func__
            if key not in _METHOD_SCHEMAS:
                _METHOD_SCHEMAS[key] = tool_schema(fn)
            schema = _METHOD_SCHEMAS[key]
        else:
            schema = tool_schema(fn)
        return cls(schema["function"]["name"], fn, schema)


_METHOD_SCHEMAS: dict[Callable, dict] = {}


def environment_methods(environment) -> list[Callable]:
    """The bound public methods of ``environment`` that are tools: defined on its class, not
    starting with ``_``, other than ``reset``; in definition order (base classes first)."""
    names: list[str] = []
    for klass in reversed(type(environment).__mro__):
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name == "reset" or name in names:
                continue
            if inspect.isfunction(value) or inspect.iscoroutinefunction(value):
                names.append(name)
    return [getattr(environment, name) for name in names]


class Toolbox:
    """The tools of one episode by name: plain tools plus an environment's methods.

    Args:
        tools: callables (or :class:`Tool` objects already described).
        environment: an environment object, or None.
    """

    def __init__(self, tools: Sequence = (), environment=None):
        self.environment = environment
        self.tools: dict[str, Tool] = {}
        methods = environment_methods(environment) if environment is not None else []
        if environment is not None and not methods:
            raise ToolError(
                f"environment {type(environment).__name__} has no public methods, so the model has no tool to call. "
                "Fix: define the actions as methods (names not starting with '_') with type hints and docstrings"
            )
        for item in [*tools, *methods]:
            tool = item if isinstance(item, Tool) else Tool.of(item)
            if tool.name in self.tools:
                raise ToolError(
                    f"two tools are named {tool.name!r} (the model calls tools by name). Fix: rename one"
                    + (" (environment methods and tools= share one namespace)" if methods else "")
                )
            self.tools[tool.name] = tool

    @property
    def schemas(self) -> list[dict]:
        """The schemas of every tool, for ``apply_chat_template(..., tools=...)``."""
        return [tool.schema for tool in self.tools.values()]

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def get(self, name) -> Tool | None:
        return self.tools.get(name) if isinstance(name, str) else None

    @property
    def done(self) -> bool:
        """True once the environment set ``done`` (ends the episode)."""
        return bool(getattr(self.environment, "done", False)) if self.environment is not None else False


def reset_environment(environment, columns: Mapping) -> None:
    """Call ``environment.reset`` (when it has one) with the columns it names, or all of them when
    it takes ``**kwargs``; it must return None."""
    reset = getattr(environment, "reset", None)
    if reset is None:
        return
    parameters = inspect.signature(reset).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        arguments = dict(columns)
    else:
        names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        missing = [p.name for p in parameters if p.default is p.empty and p.name not in columns and p.kind is not p.VAR_POSITIONAL]
        if missing:
            raise ToolError(
                f"{type(environment).__name__}.reset needs {missing}, which the prompt rows do not have "
                f"(columns: {sorted(columns)}). Fix: add the columns or give the parameters defaults"
            )
        arguments = {name: value for name, value in columns.items() if name in names}
    returned = reset(**arguments)
    if returned is not None:
        raise ToolError(
            f"{type(environment).__name__}.reset returned {returned!r:.80}; it must return None (posttrain does not add "
            "text to the prompt). Fix: state the task in the prompt column and keep reset for the environment's state"
        )


def build_toolbox(tools: Sequence, environment_factory: Callable | None, columns: Mapping | None = None) -> Toolbox:
    """The :class:`Toolbox` of one new episode: a fresh environment from ``environment_factory``
    (reset with ``columns``) and the shared ``tools``."""
    environment = None
    if environment_factory is not None:
        if not callable(environment_factory):
            raise ToolError(f"environment_factory must be a class or a callable returning an environment, got {environment_factory!r:.80}")
        environment = environment_factory()
        reset_environment(environment, columns or {})
    return Toolbox(tools, environment)


def resolve_tools(items) -> list:
    """Tools from a config or a caller: callables as they are, ``'module:function'`` and
    ``'path/to/file.py:function'`` strings imported (the YAML form)."""
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    tools = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            tools.append(import_path(item, f"tools[{index}]", "tool"))
        elif callable(item):
            tools.append(item)
        else:
            raise ToolError(f"tools[{index}]: {item!r:.80} is not a tool; give a function, 'module:function' or 'path/to/file.py:function'")
    return tools


def resolve_environment_factory(item) -> Callable | None:
    """An environment factory from a config or a caller: a class or callable as it is,
    ``'module:Class'`` / ``'path/to/file.py:Class'`` imported; None stays None."""
    if item is None or item == "":
        return None
    if isinstance(item, str):
        return import_path(item, "environment_factory", "environment factory")
    if callable(item):
        return item
    raise ToolError(f"environment_factory: {item!r:.80} is neither a class nor a callable; give one, or 'module:Class' / 'path/to/file.py:Class'")
