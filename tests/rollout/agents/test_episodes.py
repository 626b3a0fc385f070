"""Multi-turn episodes: sampled ids kept exactly, the template's text inserted between turns,
turns batched across episodes, limits, environments and failures."""

from __future__ import annotations

import re

import pytest

from posttrain.data.chat import NotPrefixPreservingError
from posttrain.rollout import SamplingOptions
from posttrain.rollout.agents import EpisodePrompt, ToolOptions, encode_tool_prompt, episode_metrics, generate_episodes
from posttrain.tasks.tool_use import multiply
from posttrain.testing import NON_PREFIX_TEMPLATE, ScriptedTurnsEngine, build_tokenizer


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: a number
        b: a number
    """
    return a + b


def fail(reason: str) -> str:
    """Always fail.

    Args:
        reason: why
    """
    raise RuntimeError(reason)


TOOLS = [multiply, add]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("tools")


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def prompt(tokenizer, question: str, tools=TOOLS, **columns) -> EpisodePrompt:
    messages = [{"role": "user", "content": question}]
    return EpisodePrompt(messages, encode_tool_prompt(tokenizer, messages, tools), columns)


def assistant_text(tokenizer, message: dict, tools=TOOLS) -> str:
    """The template's own text of one assistant turn, up to and including <|im_end|>."""
    before = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=tools, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, message], tools=tools, tokenize=False)
    return full[len(before) :].rstrip()


# The two-call episode: 47*38, then + 5, then the answer.
TWO_CALLS = [
    {"role": "assistant", "content": "", "tool_calls": [call("multiply", a=47, b=38)]},
    {"role": "tool", "name": "multiply", "content": "1786"},
    {"role": "assistant", "content": "Now add.", "tool_calls": [call("add", a=1786, b=5)]},
    {"role": "tool", "name": "add", "content": "1791"},
    {"role": "assistant", "content": "1791"},
]
QUESTION = "What is 47*38+5?"


def turn_script(turns_by_question: dict):
    """reply(context) -> the next scripted turn of the context's question (indexed by how many
    assistant turns the context already holds)."""

    def reply(context: str):
        question = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", context)[0]
        done = context.count("<|im_start|>assistant\n") - 1
        return turns_by_question[question][done]

    return reply


def run(tokenizer, prompts, turns_by_question, *, max_length=256, num_generations=1, **tool_options):
    engine = ScriptedTurnsEngine(tokenizer, turn_script(turns_by_question))
    options = SamplingOptions(max_completion_length=max_length)
    episodes = generate_episodes(engine, tokenizer, prompts, options, ToolOptions(tools=tool_options.pop("tools", TOOLS), **tool_options), num_generations)
    return episodes, engine


def test_a_two_call_episode_is_the_templates_rendering_of_the_conversation(tokenizer):
    turns = [assistant_text(tokenizer, m) for m in TWO_CALLS if m["role"] == "assistant"]
    [episode], _ = run(tokenizer, [prompt(tokenizer, QUESTION)], {QUESTION: turns})
    conversation = [{"role": "user", "content": QUESTION}, *TWO_CALLS]
    rendered = tokenizer.apply_chat_template(conversation, tools=TOOLS, tokenize=False).rstrip()
    expected = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert episode.prompt_ids + episode.token_ids == expected
    sampled = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in turns]
    assert [t for t, g in zip(episode.token_ids, episode.generated) if g] == sum(sampled, [])
    assert (episode.turns, episode.tool_calls, episode.finish_reason, episode.hit_limit) == (3, 2, "eos", False)
    assert episode.messages == TWO_CALLS and episode.text == "1791"


def test_sampled_ids_are_kept_even_when_they_are_not_how_the_text_tokenizes(tokenizer):
    # The model spells its turns one character per token: the same text, other ids. They must stay
    # exactly as sampled, and only what lies between the turns comes from the template.
    texts = [assistant_text(tokenizer, m) for m in TWO_CALLS if m["role"] == "assistant"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    spelled = [
        [i for ch in t.removesuffix("<|im_end|>") for i in tokenizer(ch, add_special_tokens=False)["input_ids"]] + [end] for t in texts
    ]
    assert [len(s) > len(tokenizer(t, add_special_tokens=False)["input_ids"]) for s, t in zip(spelled, texts)] == [True, True, False]
    [episode], _ = run(tokenizer, [prompt(tokenizer, QUESTION)], {QUESTION: spelled})

    # split the episode into runs of sampled / inserted tokens
    runs, kinds = [], []
    for token, generated in zip(episode.token_ids, episode.generated):
        if not kinds or kinds[-1] != generated:
            runs.append([])
            kinds.append(generated)
        runs[-1].append(token)
    assert kinds == [True, False, True, False, True]
    assert [runs[0], runs[2], runs[4]] == spelled
    # what lies between the turns, read off one rendering of the whole conversation by character spans
    conversation = [{"role": "user", "content": QUESTION}, *TWO_CALLS]
    full = tokenizer.apply_chat_template(conversation, tools=TOOLS, tokenize=False)
    spans = []
    for k, message in enumerate(conversation):
        if message["role"] == "assistant":
            start = len(tokenizer.apply_chat_template(conversation[:k], tools=TOOLS, tokenize=False, add_generation_prompt=True))
            spans.append((start, len(tokenizer.apply_chat_template(conversation[: k + 1], tools=TOOLS, tokenize=False).rstrip())))
    between = [full[spans[j][1] : spans[j + 1][0]] for j in range(2)]
    assert [tokenizer.decode(runs[1]), tokenizer.decode(runs[3])] == between
    assert [runs[1], runs[3]] == [tokenizer(b, add_special_tokens=False)["input_ids"] for b in between]


def test_turns_are_batched_across_episodes_round_by_round(tokenizer):
    answer = assistant_text(tokenizer, {"role": "assistant", "content": "7"})
    one_call = [assistant_text(tokenizer, TWO_CALLS[0]), answer]
    two_calls = [assistant_text(tokenizer, m) for m in TWO_CALLS if m["role"] == "assistant"]
    script = {"What is 3+4?": [answer], "What is 47*38?": one_call, QUESTION: two_calls}
    prompts = [prompt(tokenizer, q) for q in script]
    episodes, engine = run(tokenizer, prompts, script, num_generations=2)
    assert engine.calls == [6, 4, 2]  # one generate call per round, with every unfinished episode
    assert [e.turns for e in episodes] == [1, 1, 2, 2, 3, 3]
    assert [e.text for e in episodes] == ["7", "7", "7", "7", "1791", "1791"]
    metrics = episode_metrics(episodes)
    assert metrics["tools/turns"] == pytest.approx(12 / 6)
    assert metrics["tools/call_frequency"] == pytest.approx(6 / 6)
    assert metrics["tools/failure_frequency"] == 0.0 and metrics["tools/hit_limit_ratio"] == 0.0


def test_calls_after_the_last_round_are_not_run_and_count_as_hitting_the_limit(tokenizer):
    again = assistant_text(tokenizer, TWO_CALLS[0])
    [episode], engine = run(tokenizer, [prompt(tokenizer, "Loop?")], {"Loop?": [again] * 5}, max_tool_calling_iterations=2)
    assert (episode.turns, episode.tool_calls, episode.hit_limit) == (3, 2, True)
    assert [m["role"] for m in episode.messages] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert engine.calls == [1, 1, 1]
    assert episode_metrics([episode])["tools/hit_limit_ratio"] == 1.0


def test_the_budget_covers_inserted_tokens(tokenizer):
    turns = [assistant_text(tokenizer, m) for m in TWO_CALLS if m["role"] == "assistant"]
    first = len(tokenizer(turns[0], add_special_tokens=False)["input_ids"])
    [episode], engine = run(tokenizer, [prompt(tokenizer, QUESTION)], {QUESTION: turns}, max_length=first + 3)
    assert len(episode.token_ids) == first + 3 and episode.generated == [True] * first + [False] * 3
    assert episode.finish_reason == "length" and engine.calls == [1]
    [cut], _ = run(tokenizer, [prompt(tokenizer, QUESTION)], {QUESTION: turns}, max_length=first - 1)
    assert (len(cut.token_ids), cut.finish_reason, cut.tool_calls) == (first - 1, "length", 0)


def test_failures_become_tool_messages_and_the_episode_goes_on(tokenizer):
    bad_turn = (
        '<tool_call>{"name": "multiply", "arguments": {"a": 4</tool_call><|im_end|>',
        '<tool_call>{"name": "power", "arguments": {"a": 2}}</tool_call>'
        '<tool_call>{"name": "fail", "arguments": {"reason": "no network"}}</tool_call><|im_end|>',
        "done<|im_end|>",
    )
    tools = [*TOOLS, fail]
    [episode], _ = run(tokenizer, [prompt(tokenizer, "Break?", tools)], {"Break?": bad_turn}, tools=tools, max_length=1024)
    tool_messages = [m["content"] for m in episode.messages if m["role"] == "tool"]
    assert [m.split(" (")[0].split(";")[0] for m in tool_messages] == [
        "error: malformed tool call", "error: unknown tool 'power'", "error: fail raised RuntimeError: no network",
    ]
    assert dict(episode.tool_errors) == {"malformed": 1, "unknown_tool": 1, "exception": 1}
    assert (episode.turns, episode.tool_calls, episode.text) == (3, 3, "done")
    metrics = episode_metrics([episode])
    assert metrics["tools/failure_frequency"] == 1.0
    assert (metrics["tools/errors/malformed"], metrics["tools/errors/timeout"]) == (1.0, 0.0)


class Counter:
    def __init__(self):
        self.value, self.target, self.done = 0, None, False

    def reset(self, target: int) -> None:
        self.target = target

    def increment(self, by: int) -> int:
        """Add to the counter.

        Args:
            by: how much to add
        """
        self.value += by
        return self.value

    def submit(self) -> str:
        """Submit the counter's value; ends the episode."""
        self.done = True
        return "ok"


def test_each_episode_has_its_own_environment_which_can_end_it(tokenizer):
    script = {
        "Reach 5": [
            '<tool_call>{"name": "increment", "arguments": {"by": 2}}</tool_call><|im_end|>',
            '<tool_call>{"name": "increment", "arguments": {"by": 3}}</tool_call><tool_call>{"name": "submit", "arguments": {}}</tool_call><|im_end|>',
            "never reached<|im_end|>",
        ]
    }
    box_schemas = [{"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object", "properties": {}}}} for n in ("increment", "submit")]
    messages = [{"role": "user", "content": "Reach 5"}]
    prompts = [EpisodePrompt(messages, encode_tool_prompt(tokenizer, messages, box_schemas), {"target": 5, "prompt": messages})]
    episodes, engine = run(tokenizer, prompts, script, num_generations=2, tools=[], environment_factory=Counter)
    assert engine.calls == [2, 2]
    assert [(e.environment.value, e.environment.target, e.environment.done) for e in episodes] == [(5, 5, True)] * 2
    assert episodes[0].environment is not episodes[1].environment
    assert [e.turns for e in episodes] == [2, 2] and episodes[0].generated[-1] is False  # ended after the tool results


def test_a_template_that_rewrites_earlier_turns_cannot_be_extended():
    # Like Qwen3's: <think> blocks are dropped from assistant turns that a user (here: or tool)
    # turn follows, so adding the tool result changes the text of the turn before it.
    rewriting = build_tokenizer("tools")
    rewriting.chat_template = (
        "{% if tools %}tools: {{ tools | map(attribute='function.name') | join(',') }} <tool_call>\n{% endif %}"
        + NON_PREFIX_TEMPLATE.replace("message['role'] == 'user'", "message['role'] in ('user', 'tool')").replace(
            "{{ content }}", "{{ content }}{% if message['tool_calls'] %}<tool_call>...</tool_call>{% endif %}"
        )
    )
    script = {"Think?": ['<think>hm</think><tool_call>{"name": "multiply", "arguments": {"a": 1, "b": 2}}</tool_call><|im_end|>', "2<|im_end|>"]}
    with pytest.raises(NotPrefixPreservingError, match="not prefix-preserving"):
        run(rewriting, [prompt(rewriting, "Think?")], script)
