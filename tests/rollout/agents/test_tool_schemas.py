"""Tool schemas from callables, environments' methods as tools, and the errors for what cannot be a tool."""

from __future__ import annotations

import functools

import pytest

from posttrain.errors import ConfigError
from posttrain.rollout.agents import Toolbox, ToolError, build_toolbox, tool_schema


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def test_schema_of_a_function_is_what_the_chat_template_takes():
    assert tool_schema(multiply) == {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer", "description": "the first factor"}, "b": {"type": "integer", "description": "the second factor"}},
                "required": ["a", "b"],
            },
            "return": {"type": "integer"},
        },
    }


def no_docstring(a: int) -> int:
    return a


def no_hint(a) -> int:
    """Echo.

    Args:
        a: anything
    """
    return a


def undescribed(a: int) -> int:
    """Echo without describing a."""
    return a


class CallableObject:
    def __call__(self, a: int) -> int:
        """Echo.

        Args:
            a: a number
        """
        return a


@pytest.mark.parametrize(
    "fn, expected",
    [
        (no_docstring, "no docstring"),
        (no_hint, "missing a type hint"),
        (undescribed, "no description for the argument 'a'"),
        (functools.partial(multiply, b=2), "not a function or method"),
        (CallableObject(), "not a function or method"),
    ],
)
def test_a_callable_that_cannot_be_described_is_refused_with_the_fix(fn, expected):
    with pytest.raises(ToolError, match=expected) as caught:
        tool_schema(fn)
    assert isinstance(caught.value, ConfigError)  # the CLI prints one line and exits 2
    assert "Fix:" in str(caught.value)


class Counter:
    """An environment: public methods are tools, reset and private helpers are not."""

    def __init__(self):
        self.value = 0
        self.target = None
        self.done = False

    def reset(self, target: int) -> None:
        self.target = target

    def increment(self, by: int) -> int:
        """Add to the counter.

        Args:
            by: how much to add
        """
        self.value = self._add(by)
        return self.value

    def submit(self) -> str:
        """Finish the episode."""
        self.done = True
        return "submitted"

    def _add(self, by: int) -> int:
        return self.value + by


def test_environment_methods_are_its_tools_without_self():
    box = build_toolbox([multiply], Counter, {"target": 7, "prompt": "ignored"})
    assert box.names == ["multiply", "increment", "submit"]
    assert list(box.schemas[1]["function"]["parameters"]["properties"]) == ["by"]
    assert box.environment.target == 7  # reset got the column it names, not the others
    assert box.get("increment").function(3) == 3 and box.environment.value == 3
    assert not box.done
    box.get("submit").function()
    assert box.done


def test_each_toolbox_gets_its_own_environment():
    first, second = build_toolbox([], Counter, {"target": 1}), build_toolbox([], Counter, {"target": 2})
    first.get("increment").function(5)
    assert (first.environment.value, second.environment.value) == (5, 0)


def test_duplicate_tool_names_are_refused():
    with pytest.raises(ToolError, match="two tools are named 'multiply'"):
        Toolbox([multiply, multiply])


def test_reset_missing_a_column_or_returning_text_is_refused():
    with pytest.raises(ToolError, match=r"reset needs \['target'\]"):
        build_toolbox([], Counter, {"prompt": "x"})

    class Talkative(Counter):
        def reset(self, **kwargs):
            return "the board is empty"

    with pytest.raises(ToolError, match="must return None"):
        build_toolbox([], Talkative, {})


def test_environment_without_public_methods_is_refused():
    class Empty:
        def _hidden(self) -> None:
            pass

    with pytest.raises(ToolError, match="no public methods"):
        build_toolbox([], Empty)
