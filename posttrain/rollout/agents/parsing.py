"""Reading the model's tool calls from its output, in the format its chat template writes them.

Parsing is transformers' ``tokenizer.parse_response``, driven by a declarative response template
(a ``schema`` dict naming the regions of a reply: content, tool calls). The format is decided
once per tokenizer (:func:`response_schema`):

1. the tokenizer's own ``response_template``, when it ships one (the model's authors describing
   their format);
2. else the template's tool-call markup: a template that writes ``<tool_call>...</tool_call>``
   (Qwen2.5, Qwen3, Hermes and the ``tools`` fixture of :mod:`posttrain.testing`) gets
   :func:`tool_call_tags_schema`, one JSON object ``{"name": ..., "arguments": {...}}`` per tag;
3. else a clear error: a template that never reads ``tools`` has no tool support at all, and one
   that does in another format needs a ``response_template`` set on the tokenizer.

The parser reads token ids, so markup counts only where the model produced it; the prompt up to
the turn (``context_ids``) is passed along because templates may pre-write the start of a reply.
A reply that cannot be parsed (a ``<tool_call>`` with broken JSON, a call without a name, arguments
that are not an object) is not an exception: it becomes one malformed :class:`ToolCall`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.data.chat import render
from posttrain.data.prompts import end_of_turn_ids
from posttrain.rollout.agents.execution import ToolCall
from posttrain.rollout.agents.tools import ToolError

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the tool one when there is one
        template = template.get("tool_use") or template.get("default") or "\n".join(template.values())
    return template or ""


def generation_prompt(tokenizer) -> str:
    """The text the template writes to open an assistant reply (ChatML's
    ``<|im_start|>assistant\\n``): the generation prompt after a one-message conversation."""
    ping = [{"role": "user", "content": "ping"}]
    closed = render(tokenizer, ping)
    opened = render(tokenizer, ping, add_generation_prompt=True)
    return opened[len(closed) :] if opened.startswith(closed) else ""


def tool_call_tags_schema(tokenizer) -> dict:
    """A response template for replies that write each call as ``<tool_call>{"name": ...,
    "arguments": {...}}</tool_call>`` after optional text, ending with the template's end-of-turn
    token or EOS."""
    stops = [tokenizer.decode(end_of_turn_ids(tokenizer)), tokenizer.eos_token]
    stops = [re.escape(s) for s in dict.fromkeys(s for s in stops if s)]
    schema = {
        "defaults": {"role": "assistant"},
        "fields": {
            "tool_calls": {
                # whitespace before a tag belongs to no region (else it would open an empty content one)
                "open_pattern": r"\s*" + re.escape(TOOL_CALL_OPEN),
                "close": TOOL_CALL_CLOSE,
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            "content": {"close_pattern": r"\s*(?:" + "|".join(stops) + ")" if stops else r"$", "content": "text"},
        },
    }
    # The reply starts after the template's generation prompt, the last one in the context; a
    # template without one starts replies right after the context (which the parser is then not given).
    anchor = generation_prompt(tokenizer)
    if anchor:
        schema["start_anchor"] = anchor
    else:
        schema["start_anchor_pattern"] = r"\A"
    return schema


def _probe_tool(x: int) -> int:
    """Probe whether a chat template renders tools.

    Args:
        x: any number
    """
    return x


def response_schema(tokenizer) -> dict:
    """How this tokenizer's replies write tool calls (see the module docstring); raises
    :class:`~posttrain.rollout.agents.tools.ToolError` when it cannot tell."""
    own = getattr(tokenizer, "response_template", None)
    if own is not None:
        return own
    template = _template_text(tokenizer)
    if not template:
        raise ToolError("tools need a chat template, and this tokenizer has none. Fix: set chat_template to one with tool support")
    rendered = render(tokenizer, [{"role": "user", "content": "ping"}], tools=[_probe_tool])
    if "tools" not in template or "_probe_tool" not in rendered:
        raise ToolError(
            "this chat template has no tool support: it does not render the tools it is given, so the model would never "
            "learn they exist. Fix: use a chat template with tool support (chat_template=...), e.g. the model family's "
            "tool-use template"
        )
    if TOOL_CALL_OPEN in template:
        return tool_call_tags_schema(tokenizer)
    raise ToolError(
        "cannot tell how this chat template writes tool calls (it does not use <tool_call>...</tool_call> tags). Fix: "
        "set tokenizer.response_template to a response template describing the format (transformers' response "
        "parsing: tokenizer.parse_response)"
    )


@dataclass(frozen=True)
class ParsedTurn:
    """One model turn read back: the assistant ``message`` (``content`` and, when it called tools,
    ``tool_calls`` in the chat-template form) and the ``calls`` to run, malformed ones included."""

    message: dict
    calls: list[ToolCall]


def _call(entry) -> ToolCall:
    """A ``tool_calls`` entry of a parsed reply as a :class:`ToolCall` (malformed when it is not
    ``{"function": {"name": str, "arguments": object or JSON object string}}``)."""
    function = entry.get("function") if isinstance(entry, dict) else None
    if not isinstance(function, dict):
        return ToolCall(None, None, f"expected a JSON object with a name and arguments, got {function!r:.120}")
    name, arguments = function.get("name"), function.get("arguments", {})
    if not isinstance(name, str) or not name:
        return ToolCall(None, None, f"no tool name in {function!r:.120}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCall(name, None, f"the arguments of {name} are not JSON ({exc.msg})")
    if not isinstance(arguments, dict):
        return ToolCall(name, None, f"the arguments of {name} must be a JSON object, got {arguments!r:.120}")
    return ToolCall(name, arguments)


class ToolCallParser:
    """Reads the tool calls of one model turn (see the module docstring).

    ``parse(turn_ids, context_ids)``: ``turn_ids`` are the tokens the model sampled in this turn,
    ``context_ids`` everything before them (prompt and earlier turns)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.schema = response_schema(tokenizer)
        self.with_context = "start_anchor" in self.schema
        try:  # a broken response template is the user's to fix, not a malformed call of the model
            tokenizer.parse_response("", self.schema, prefix="")
        except ValueError as exc:
            raise ToolError(f"the response template cannot parse replies: {exc}. Fix: correct tokenizer.response_template") from exc

    def parse(self, turn_ids: Sequence[int], context_ids: Sequence[int]) -> ParsedTurn:
        text = self.tokenizer.decode(list(turn_ids), skip_special_tokens=True)
        try:
            parsed = self.tokenizer.parse_response(list(turn_ids), self.schema, prefix=list(context_ids) if self.with_context else [])
        except ValueError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return ParsedTurn({"role": "assistant", "content": text}, [ToolCall(None, None, problem)])
        calls = [_call(entry) for entry in parsed.get("tool_calls") or []]
        message = {"role": "assistant", "content": parsed.get("content") or ""}
        good = [c for c in calls if c.problem is None]
        if good:
            message["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in good]
        if len(good) < len(calls):  # keep what the model wrote visible when part of it was unreadable
            message["content"] = text
        return ParsedTurn(message, calls)
