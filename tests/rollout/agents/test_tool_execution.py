"""Running tool calls: results become tool messages; every failure kind becomes an error message
and a count, never an exception."""

from __future__ import annotations

import asyncio
import threading
import time

from posttrain.rollout.agents import ERROR_KINDS, Toolbox, ToolCall, run_tool_calls
from posttrain.tasks.tool_use import multiply


def divide(a: int, b: int) -> float:
    """Divide.

    Args:
        a: numerator
        b: denominator
    """
    return a / b


def lookup(key: str) -> dict:
    """Look a key up.

    Args:
        key: the key
    """
    return {"key": key, "rows": [1, 2]}


RELEASE = threading.Event()


def stuck(seconds: float) -> str:
    """Wait.

    Args:
        seconds: how long
    """
    RELEASE.wait(seconds)
    return "late"


async def async_add(a: int, b: int) -> int:
    """Add, asynchronously.

    Args:
        a: a number
        b: a number
    """
    await asyncio.sleep(0)
    return a + b


BOX = Toolbox([multiply, divide, lookup, stuck, async_add])


def test_results_become_tool_messages_in_call_order():
    calls = [ToolCall("multiply", {"a": 47, "b": 38}), ToolCall("lookup", {"key": "x"}), ToolCall("async_add", {"a": 2, "b": 3})]
    [results] = run_tool_calls([(BOX, calls)])
    assert [r.message() for r in results] == [
        {"role": "tool", "name": "multiply", "content": "1786"},
        {"role": "tool", "name": "lookup", "content": '{"key": "x", "rows": [1, 2]}'},
        {"role": "tool", "name": "async_add", "content": "5"},
    ]
    assert [r.error for r in results] == [None, None, None]


def test_every_failure_kind_is_a_message_and_a_kind(tmp_path):
    calls = [
        ToolCall(None, None, "no tool name in {'nam': 'multiply'}"),
        ToolCall("multiply", {"a": 1, "c": 2}),  # arguments that do not fit the parameters
        ToolCall("power", {"a": 2}),
        ToolCall("divide", {"a": 1, "b": 0}),
        ToolCall("stuck", {"seconds": 30.0}),
        ToolCall("multiply", {"a": 6, "b": 7}),  # the episode goes on after its failures
    ]
    started = time.monotonic()
    [results] = run_tool_calls([(BOX, calls)], timeout=0.3)
    elapsed = time.monotonic() - started
    RELEASE.set()  # let the abandoned call's thread end
    assert [r.error for r in results] == ["malformed", "malformed", "unknown_tool", "exception", "timeout", None]
    assert set(ERROR_KINDS) == {"malformed", "unknown_tool", "exception", "timeout"}
    contents = [r.content for r in results]
    assert contents[0].startswith("error: malformed tool call (no tool name")
    assert "multiply cannot take the arguments" in contents[1]
    assert contents[2] == "error: unknown tool 'power'; the tools are multiply, divide, lookup, stuck, async_add"
    assert contents[3] == "error: divide raised ZeroDivisionError: division by zero"
    assert contents[4] == "error: stuck did not return within 0.3 s"
    assert contents[5] == "42"
    assert elapsed < 5  # the stuck call was abandoned at its timeout, not waited for


def test_episodes_run_together_and_keep_their_own_order():
    order: list[tuple[int, int]] = []

    class Recorder:
        def __init__(self, episode):
            self.episode = episode

        def note(self, k: int) -> int:
            """Record a call.

            Args:
                k: the call's index
            """
            time.sleep(0.01 * (3 - k))  # later calls faster: order must come from sequencing, not timing
            order.append((self.episode, k))
            return k

    jobs = [(Toolbox([], Recorder(e)), [ToolCall("note", {"k": k}) for k in range(3)]) for e in range(2)]
    results = run_tool_calls(jobs, timeout=10)
    assert [[r.content for r in episode] for episode in results] == [["0", "1", "2"], ["0", "1", "2"]]
    for episode in range(2):
        assert [k for e, k in order if e == episode] == [0, 1, 2]
