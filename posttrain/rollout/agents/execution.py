"""Running the tool calls of one round: every call ends as a tool message, never as an exception.

A call can fail in four ways, each a kind in :data:`ERROR_KINDS`, counted, and shown to the model
as the tool message's content (so it can learn to call better):

- ``malformed``: the model's output could not be read as a call (bad JSON, no name, arguments
  that are not an object), or the arguments do not fit the tool's parameters;
- ``unknown_tool``: no tool has that name;
- ``exception``: the tool raised;
- ``timeout``: the tool did not return within ``timeout`` seconds.

**Threads.** The calls of a round run concurrently, one daemon thread per call, each episode's
calls in the order the model wrote them (the k-th calls of all episodes run together, then the
(k+1)-th): slow I/O-bound tools overlap, and an environment never sees two calls at once. The
timeout is wall time from the start of the call's wave; a timed-out call is abandoned, not killed
(Python cannot stop a thread): its thread runs on in the background and its result is dropped.
CPU-bound tools share the interpreter lock, so a tight timeout also counts the other calls of
the wave. A coroutine function runs to completion in its thread's own event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.rollout.agents.tools import Toolbox

ERROR_KINDS = ("malformed", "unknown_tool", "exception", "timeout")


@dataclass(frozen=True)
class ToolCall:
    """One call as the model wrote it. ``problem`` is set (and ``name`` / ``arguments`` may be
    None) when the output could not be read as a call."""

    name: str | None
    arguments: dict | None
    problem: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """What a call returned, as the tool message the model reads, and its error kind (None when
    the call succeeded)."""

    call: ToolCall
    content: str
    error: str | None = None

    def message(self) -> dict:
        """The ``{"role": "tool", "name", "content"}`` message appended to the conversation."""
        return {"role": "tool", "name": self.call.name if isinstance(self.call.name, str) else "", "content": self.content}


def result_text(value) -> str:
    """A tool's return value as message text: a string as is, anything else as JSON when it can
    be (``1786``, ``{"rows": 3}``, ``null``), else ``str(value)``."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _failure(call: ToolCall, kind: str, text: str) -> ToolResult:
    return ToolResult(call, f"error: {text}", kind)


def _prepared(toolbox: Toolbox, call: ToolCall):
    """``(function, arguments)`` ready to run, or the :class:`ToolResult` of a call that cannot run."""
    if call.problem is not None:
        return _failure(call, "malformed", f"malformed tool call ({call.problem})")
    tool = toolbox.get(call.name)
    if tool is None:
        return _failure(call, "unknown_tool", f"unknown tool {call.name!r}; the tools are {', '.join(toolbox.names) or 'none'}")
    try:
        inspect.signature(tool.function).bind(**call.arguments)
    except TypeError as exc:
        return _failure(call, "malformed", f"{tool.name} cannot take the arguments {call.arguments!r:.200} ({exc})")
    return tool.function, call.arguments


class _Running:
    """One call running in a daemon thread; ``outcome`` is ``("ok", value)`` or ``("raised", exc)``
    once it finished."""

    def __init__(self, function, arguments: dict):
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(function, arguments), daemon=True)
        self.thread.start()

    def _run(self, function, arguments) -> None:
        try:
            value = function(**arguments)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            self.outcome = ("ok", value)
        except BaseException as exc:  # noqa: BLE001 - a tool's failure is data; this is a worker thread
            self.outcome = ("raised", exc)


async def _awaited(awaitable):
    return await awaitable


def _finish(call: ToolCall, running: _Running, deadline: float | None, timeout: float | None) -> ToolResult:
    running.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    if running.outcome is None:
        return _failure(call, "timeout", f"{call.name} did not return within {timeout:g} s")
    status, value = running.outcome
    if status == "raised":
        return _failure(call, "exception", f"{call.name} raised {type(value).__name__}: {value}")
    return ToolResult(call, result_text(value))


def run_tool_calls(jobs: Sequence[tuple[Toolbox, Sequence[ToolCall]]], timeout: float | None = None) -> list[list[ToolResult]]:
    """Run every episode's calls (``jobs``: one ``(toolbox, calls)`` per episode); returns one list
    of results per episode, in call order. Never raises for a failing call (see the module
    docstring); ``timeout`` None waits for every call."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"tool_timeout must be > 0 seconds or None, got {timeout!r}")
    results: list[list[ToolResult | None]] = [[None] * len(calls) for _, calls in jobs]
    waves = max((len(calls) for _, calls in jobs), default=0)
    for k in range(waves):
        started = []
        for episode, (toolbox, calls) in enumerate(jobs):
            if k >= len(calls):
                continue
            prepared = _prepared(toolbox, calls[k])
            if isinstance(prepared, ToolResult):
                results[episode][k] = prepared
            else:
                started.append((episode, calls[k], _Running(*prepared)))
        deadline = None if timeout is None else time.monotonic() + timeout
        for episode, call, running in started:
            results[episode][k] = _finish(call, running, deadline, timeout)
    return results
