"""The fixture template with tool support, and reading tool calls back in the template's format."""

from __future__ import annotations

import pytest

from posttrain.rollout.agents import ToolCall, ToolCallParser, ToolError, response_schema
from posttrain.testing import CHATML_TEMPLATE, build_tokenizer


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: a number
        b: a number
    """
    return a * b


@pytest.fixture(scope="module")
def tools_tokenizer():
    return build_tokenizer("tools")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_without_tools_the_template_renders_as_chatml(tools_tokenizer, chatml):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3+4?"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "And 5+5?"},
    ]
    for generation_prompt in (False, True):
        assert tools_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt) == (
            chatml.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)
        )


def test_tools_go_into_the_system_turn_and_calls_into_the_assistant_turn(tools_tokenizer):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 47*38?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 47, "b": 38}}}]},
        {"role": "tool", "name": "multiply", "content": "1786"},
        {"role": "assistant", "content": "1786"},
    ]
    assert tools_tokenizer.apply_chat_template(conversation, tools=[multiply], tokenize=False) == (
        "<|im_start|>system\nBe brief.\nTools:\n- multiply(a, b): Multiply two integers.\n<|im_end|>\n"
        "<|im_start|>user\nWhat is 47*38?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "multiply", "arguments": {"a": 47, "b": 38}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\n1786<|im_end|>\n"
        "<|im_start|>assistant\n1786<|im_end|>\n"
    )


CONTEXT = [{"role": "user", "content": "What is 47*38?"}]


def parse(tokenizer, reply: str):
    context = ids(tokenizer, tokenizer.apply_chat_template(CONTEXT, tools=[multiply], tokenize=False, add_generation_prompt=True))
    return ToolCallParser(tokenizer).parse(ids(tokenizer, reply), context)


def test_calls_are_read_back_from_the_models_tokens(tools_tokenizer):
    turn = parse(
        tools_tokenizer,
        'Let me compute.<tool_call>{"name": "multiply", "arguments": {"a": 47, "b": 38}}</tool_call>\n'
        '<tool_call>{"name": "multiply", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}</tool_call><|im_end|>',
    )
    assert turn.calls == [ToolCall("multiply", {"a": 47, "b": 38}), ToolCall("multiply", {"a": 2, "b": 3})]
    assert turn.message == {
        "role": "assistant",
        "content": "Let me compute.",
        "tool_calls": [
            {"type": "function", "function": {"name": "multiply", "arguments": {"a": 47, "b": 38}}},
            {"type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 3}}},
        ],
    }


def test_an_answer_without_calls_has_no_calls(tools_tokenizer):
    turn = parse(tools_tokenizer, "1786<|im_end|>")
    assert turn.calls == [] and turn.message == {"role": "assistant", "content": "1786"}


@pytest.mark.parametrize(
    "reply, problem",
    [
        ('<tool_call>{"name": "multiply", "arguments": {"a": 47</tool_call><|im_end|>', "could not parse"),
        ('<tool_call>{"name": "multiply", "arguments": {"a": 4}}<|im_end|>', "could not parse"),  # never closed
        ('<tool_call>{"nam": "multiply"}</tool_call><|im_end|>', "no tool name"),
        ('<tool_call>[47, 38]</tool_call><|im_end|>', "expected a JSON object"),
        ('<tool_call>{"name": "multiply", "arguments": [47, 38]}</tool_call><|im_end|>', "must be a JSON object"),
        ('<tool_call>{"name": "multiply", "arguments": "{47"}</tool_call><|im_end|>', "are not JSON"),
    ],
)
def test_unreadable_calls_are_malformed_calls_not_exceptions(tools_tokenizer, reply, problem):
    turn = parse(tools_tokenizer, reply)
    [call] = turn.calls
    assert call.problem is not None and problem in call.problem
    assert "tool_calls" not in turn.message


def test_a_template_without_tool_support_is_refused(chatml):
    with pytest.raises(ToolError, match="no tool support"):
        response_schema(chatml)


def test_a_template_with_tools_in_an_unknown_format_asks_for_a_response_template():
    tokenizer = build_tokenizer("tools")
    tokenizer.chat_template = CHATML_TEMPLATE.replace(
        "{% for message in messages %}", "{% if tools %}Functions: {{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}{% for message in messages %}"
    )
    with pytest.raises(ToolError, match="set tokenizer.response_template"):
        response_schema(tokenizer)
    # the tokenizer's own response template, when it has one, decides the format
    tokenizer.response_template = {"defaults": {"role": "assistant"}, "fields": {"content": {"content": "text"}}}
    with pytest.raises(ToolError, match="response template cannot parse replies: .*start_anchor"):
        ToolCallParser(tokenizer)
    tokenizer.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|im_start|>assistant\n",
        "fields": {
            "tool_calls": {"open": "CALL", "close": "END", "repeats": True, "content": "json", "transform": {"type": "function", "function": "{content}"}},
            "content": {"close_pattern": r"\s*<\|im_end\|>", "content": "text"},
        },
    }
    context = ids(tokenizer, "<|im_start|>user\nWhat is 1*2?<|im_end|>\n<|im_start|>assistant\n")
    turn = ToolCallParser(tokenizer).parse(ids(tokenizer, 'CALL{"name": "multiply", "arguments": {"a": 1, "b": 2}}END<|im_end|>'), context)
    assert turn.calls == [ToolCall("multiply", {"a": 1, "b": 2})]
