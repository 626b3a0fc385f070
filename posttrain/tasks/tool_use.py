"""The arithmetic task where a tool is necessary: "What is 47*38?" with a ``multiply`` tool.

A tiny model cannot multiply two two-digit numbers in its head (the demo's model learns
addition, whose digits each depend on two digits of the question; a product's depend on all of
them), but it can learn to call ``multiply`` with the question's numbers and copy the result. So
held-out accuracy measures tool use: the demonstrations of :func:`tool_demonstrations` call the
tool in some rows and answer directly in the others, and an online-RL run from a model trained on
them should learn to call it always.

Rows:

- prompts (:func:`tool_prompts`): ``{"prompt": [user message], "answer": "1786"}``;
- demonstrations (:func:`tool_demonstrations`): ``{"messages": [...], "tools": [schema]}`` for
  SFT (the data layer renders ``tools`` with the chat template): the user's question, then either
  an assistant turn calling ``multiply``, the tool's result and the answer, or the answer alone.

:func:`tool_use_accuracy` plays held-out prompts as greedy multi-turn episodes and reports exact
answers and how often the tool was called.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from posttrain.rollout.agents import EpisodePrompt, ToolOptions, encode_tool_prompt, generate_episodes, tool_schema
from posttrain.rollout.generation import HFGenerationEngine
from posttrain.rollout.sampling import SamplingOptions
from posttrain.tasks.arithmetic import ArithmeticTask, _is_picked

# Products of two two-digit numbers: 10*10 to 99*99.
TOOL_MIN_OPERAND, TOOL_MAX_OPERAND = 10, 99


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: a number
        b: a number
    """
    return a * b


def tool_task(seed: int = 0) -> ArithmeticTask:
    """The multiplication task: two-digit times two-digit, held-out split by hash as every task."""
    return ArithmeticTask(seed=seed, min_operand=TOOL_MIN_OPERAND, max_operand=TOOL_MAX_OPERAND, operators=("*",))


def _question(problem) -> list[dict]:
    return [{"role": "user", "content": problem.question}]


def tool_prompts(task: ArithmeticTask, split: str, n: int | None = None) -> list[dict]:
    """Rows ``{"prompt": [{"role": "user", "content": "What is 47*38?"}], "answer": "1786"}``."""
    return [{"prompt": _question(p), "answer": str(p.answer)} for p in task.problems(split, n)]


def tool_call_message(problem) -> dict:
    """The assistant turn that calls ``multiply`` with the question's numbers."""
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": problem.a, "b": problem.b}}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def tool_demonstrations(task: ArithmeticTask, split: str, n: int | None = None, direct_rate: float = 0.5) -> list[dict]:
    """SFT rows ``{"messages": [...], "tools": [multiply's schema]}``; a ``direct_rate`` share of
    them (spread evenly) answers without calling the tool, the others call it, read its result
    and answer. Every answer is right: the direct ones are what a model cannot learn to produce."""
    if not 0.0 <= direct_rate <= 1.0:
        raise ValueError(f"direct_rate must be in [0, 1], got {direct_rate}")
    schema = [tool_schema(multiply)]
    rows = []
    for i, p in enumerate(task.problems(split, n)):
        answer = {"role": "assistant", "content": str(p.answer)}
        if _is_picked(i, direct_rate):
            messages = [*_question(p), answer]
        else:
            messages = [*_question(p), tool_call_message(p), _tool_result(p.answer), answer]
        rows.append({"messages": messages, "tools": schema})
    return rows


def copy_number(rng: random.Random) -> str:
    """A number to copy: three or four digits, each length half the time. Products of two-digit
    numbers have both lengths (a fifth of them three), and a model shown mostly four-digit numbers
    learned to copy those only: it missed nearly every three-digit tool result."""
    return str(rng.randint(100, 999) if rng.random() < 0.5 else rng.randint(1000, 9999))


def copy_demonstrations(n: int, seed: int = 0) -> list[dict]:
    """Rows ``{"prompt": "Note 4721. Say it again:", "completion": " 4721"}`` (:func:`copy_number`):
    copying a number from the context, which a pretrained model brings and a randomly initialised
    one must learn first (the tool-use demo's first stage; without it the demo's model did not
    learn to copy the question's numbers and the tool's result from ~10k tool-use demonstrations)."""
    rng = random.Random(seed)
    return [{"prompt": f"Note {number}. Say it again:", "completion": f" {number}"} for number in (copy_number(rng) for _ in range(n))]


def result_copy_demonstrations(n: int, seed: int = 0) -> list[dict]:
    """Conversations ``{"messages": [tool: "4721", assistant: "4721"]}`` (:func:`copy_number`):
    repeating a tool's result in the chat template's own format, the step from copying a number
    out of a sentence (:func:`copy_demonstrations`) to copying it out of a tool message. The
    numbers are random, not products, so the only way to the answer is to copy it."""
    rng = random.Random(seed)
    rows = []
    for number in (copy_number(rng) for _ in range(n)):
        rows.append({"messages": [_tool_result(number), {"role": "assistant", "content": number}]})
    return rows


def with_result_copies(demonstrations: list[dict], share: float, seed: int = 0) -> list[dict]:
    """As many rows as ``demonstrations``: a ``share`` of the slots (spread evenly) hold a
    :func:`result_copy_demonstrations` row, the others the demonstrations in order (those that
    no longer fit are left out). The tool-use start trains on these, so that learning when to call
    the tool and what to answer directly does not wear away the copying of the tool's result
    (without them, three-digit results were miscopied in most runs). Copy rows in the whole
    episode's context with a random result (the question's numbers in the call, the answer
    repeating a number that is not their product) did worse: the starts of training seeds 2 and 3
    then repeated 3-16% of right tool results in sampled episodes, against 20-97% (by the
    result's length) with these."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share}")
    copies = iter(result_copy_demonstrations(len(demonstrations), seed))
    demos = iter(demonstrations)
    return [next(copies) if _is_picked(i, share) else next(demos) for i in range(len(demonstrations))]


COPY_KINDS = ("sentence", "tool_result", "episode")


def copy_accuracy(model, tokenizer, kind: str, n: int = 64, seed: int = 10_000) -> float:
    """Share of ``n`` numbers that ``model`` repeats exactly with greedy decoding: after
    "Note 4721. Say it again:" (``kind="sentence"``, the format of :func:`copy_demonstrations`) or
    after a tool message in the chat template's format (``kind="tool_result"``,
    :func:`result_copy_demonstrations`), numbers freshly drawn by :func:`copy_number` seeded with
    ``seed`` (not held out: training draws cover most of the 9,900); or the tool's result in a
    whole episode (``kind="episode"``: one of the first ``n`` held-out questions, the call with
    its numbers, the product as the result), what the policy must do after a right call, where
    the question cannot give the answer away (the model never saw it answered)."""
    if kind not in COPY_KINDS:
        raise ValueError(f"kind must be one of {COPY_KINDS}, got {kind!r}")
    if kind == "episode":
        problems = tool_task().problems("test", n)
        numbers = [str(p.answer) for p in problems]
        prompts = [encode_tool_prompt(tokenizer, [*_question(p), tool_call_message(p), _tool_result(p.answer)], [tool_schema(multiply)]) for p in problems]
    else:
        rng = random.Random(seed)
        numbers = [copy_number(rng) for _ in range(n)]
        if kind == "sentence":
            prompts = [tokenizer(f"Note {number}. Say it again:", add_special_tokens=False)["input_ids"] for number in numbers]
        else:
            prompts = [_tool_message_prompt(tokenizer, number) for number in numbers]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stops = (end_of_turn,) if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id else ()
    options = SamplingOptions(max_completion_length=8, do_sample=False, stop_token_ids=stops)
    completions = HFGenerationEngine(model, tokenizer, batch_size=n).generate(prompts, options)
    return sum(c.text.strip() == number for c, number in zip(completions, numbers)) / n


def _tool_result(content) -> dict:
    return {"role": "tool", "name": "multiply", "content": str(content)}


def _tool_message_prompt(tokenizer, number: str) -> list[int]:
    text = tokenizer.apply_chat_template([_tool_result(number)], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def used_tool(messages: Sequence[Mapping]) -> bool:
    """True when an assistant turn of ``messages`` called a tool."""
    return any(m.get("role") == "assistant" and m.get("tool_calls") for m in messages)


@dataclass(frozen=True)
class ToolEvalResult:
    """Exact-match accuracy of the episodes' final answers, the share of episodes that called a
    tool, and every ``(question, episode messages, answer)`` for inspection."""

    accuracy: float
    tool_use: float
    samples: list[tuple[str, list[dict], str]]

    def copying(self) -> dict[str, float | None]:
        """Where tool-calling episodes went wrong: ``right_arguments``, the share of them whose
        last tool result is the right answer, and ``copied_3`` / ``copied_4``, the share of
        those whose final answer repeats it, for three- and four-digit answers (None where there
        were none)."""
        calling = [(messages, answer) for _, messages, answer in self.samples if used_tool(messages)]
        right = [(m, a) for m, a in calling if _last_tool_result(m) == a]  # the tool gave the answer
        shares: dict[str, float | None] = {"right_arguments": len(right) / len(calling) if calling else None}
        for digits in (3, 4):
            these = [(m, a) for m, a in right if len(a) == digits]
            repeated = sum(m[-1].get("role") == "assistant" and str(m[-1].get("content", "")).strip() == a for m, a in these)
            shares[f"copied_{digits}"] = repeated / len(these) if these else None
        return shares


def _last_tool_result(messages: Sequence[Mapping]) -> str | None:
    results = [m for m in messages if m.get("role") == "tool"]
    return str(results[-1].get("content", "")).strip() if results else None


def tool_use_accuracy(
    model, tokenizer, rows: Sequence[Mapping], tools: Sequence = (multiply,), max_new_tokens: int = 96, batch_size: int = 64,
    max_tool_calling_iterations: int = 2, samples: int = 0, seed: int = 0, engine=None,
) -> ToolEvalResult:
    """Multi-turn episodes of ``rows`` (prompt-only rows with an ``answer``), scored by exact
    match of the final assistant message (:meth:`ArithmeticTask.score`).

    ``samples=0``: one greedy episode per row. ``samples=k``: ``k`` episodes per row sampled at
    temperature 1 (the policy's own mix of calling the tool and answering directly, which greedy
    decoding hides), from a generator seeded with ``seed`` inside a forked RNG, so evaluating
    never moves the training's random state and the same model always scores the same.
    ``engine``: the generation engine (default: transformers' ``generate`` on ``model``)."""
    if not rows:
        raise ValueError("no rows to evaluate")
    schemas = [tool_schema(t) for t in tools]
    prompts = [EpisodePrompt(list(r["prompt"]), encode_tool_prompt(tokenizer, list(r["prompt"]), schemas)) for r in rows]
    engine = engine if engine is not None else HFGenerationEngine(model, tokenizer, batch_size=batch_size)
    options = SamplingOptions(max_completion_length=max_new_tokens, do_sample=samples > 0)
    tool_options = ToolOptions(tools=tuple(tools), max_tool_calling_iterations=max_tool_calling_iterations)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        episodes = generate_episodes(engine, tokenizer, prompts, options, tool_options, max(samples, 1))
    repeated = [r for r in rows for _ in range(max(samples, 1))]
    scores = [ArithmeticTask.score(e.text, str(r["answer"])) if e.messages[-1]["role"] == "assistant" else 0.0 for e, r in zip(episodes, repeated)]
    return ToolEvalResult(
        accuracy=sum(scores) / len(scores),
        tool_use=sum(used_tool(e.messages) for e in episodes) / len(episodes),
        samples=[(r["prompt"][-1]["content"], e.messages, str(r["answer"])) for e, r in zip(episodes, repeated)],
    )
