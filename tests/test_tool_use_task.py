"""The multiplication task with a multiply tool: prompts, demonstrations, and how SFT trains on them."""

from __future__ import annotations

import pytest

from posttrain.tasks.tool_use import (
    copy_demonstrations,
    multiply,
    result_copy_demonstrations,
    tool_demonstrations,
    tool_prompts,
    tool_task,
    tool_use_accuracy,
    used_tool,
    with_result_copies,
)


def test_prompts_ask_for_products_of_two_digit_numbers_held_out_by_hash():
    task = tool_task()
    train, test = tool_prompts(task, "train", 300), tool_prompts(task, "test", 100)
    for row in train + test:
        [message] = row["prompt"]
        a, b = (int(x) for x in message["content"].removeprefix("What is ").removesuffix("?").split("*"))
        assert 10 <= a <= 99 and 10 <= b <= 99 and row["answer"] == str(a * b)
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in test}


def test_demonstrations_call_the_tool_or_answer_directly_in_the_asked_share():
    rows = tool_demonstrations(tool_task(), "train", 40, direct_rate=0.25)
    direct = [r for r in rows if not used_tool(r["messages"])]
    assert len(direct) == 10  # exactly a quarter, spread evenly
    for row in rows:
        assert row["tools"][0]["function"]["name"] == "multiply"
        question, *rest = row["messages"]
        a, b = (int(x) for x in question["content"].removeprefix("What is ").removesuffix("?").split("*"))
        if used_tool(row["messages"]):
            call, result, answer = rest
            assert call["tool_calls"][0]["function"] == {"name": "multiply", "arguments": {"a": a, "b": b}}
            assert result == {"role": "tool", "name": "multiply", "content": str(multiply(a, b))}
        else:
            [answer] = rest
        assert answer == {"role": "assistant", "content": str(a * b)}


def test_sft_trains_on_the_call_and_the_answer_not_on_the_tool_result():
    # each assistant turn with its end-of-turn token (the model must learn to stop and wait)
    from posttrain.data import formats
    from posttrain.data.tokenize import LMDataOptions, tokenize_row
    from posttrain.testing import build_tokenizer

    tokenizer = build_tokenizer("tools")
    [row] = [r for r in tool_demonstrations(tool_task(), "train", 2, direct_rate=0.5) if used_tool(r["messages"])]
    data_format = formats.detect_format(list(row), row)
    [example], _ = tokenize_row(row, 0, tokenizer, data_format, "assistant", LMDataOptions(loss_mode="assistant"))
    trained = tokenizer.decode([t for t, w in zip(example["input_ids"], example["loss_weights"]) if w > 0])
    call = row["messages"][1]["tool_calls"][0]["function"]["arguments"]
    result, answer = row["messages"][2]["content"], row["messages"][3]["content"]
    assert trained == f'<tool_call>{{"name": "multiply", "arguments": {{"a": {call["a"]}, "b": {call["b"]}}}}}</tool_call><|im_end|>{answer}<|im_end|>'
    untrained = tokenizer.decode([t for t, w in zip(example["input_ids"], example["loss_weights"]) if w == 0], skip_special_tokens=True)
    assert f"tool\n{result}" in untrained and "- multiply(a, b): Multiply two integers." in untrained


def test_copy_rows_repeat_numbers_of_three_and_four_digits_about_equally():
    sentences, results = copy_demonstrations(400, seed=3), result_copy_demonstrations(400, seed=3)
    for row in sentences:
        number = row["prompt"].removeprefix("Note ").removesuffix(". Say it again:")
        assert row["completion"] == f" {number}"
    for row in results:
        tool, answer = row["messages"]
        assert tool["role"] == "tool" and answer == {"role": "assistant", "content": tool["content"]}
    numbers = [r["messages"][1]["content"] for r in results]
    assert all(len(n) in (3, 4) and n[0] != "0" for n in numbers)
    three = sum(len(n) == 3 for n in numbers)
    assert 160 <= three <= 240, three  # binomial(400, 1/2): mean 200, sd 10
    assert copy_demonstrations(5, seed=3) == sentences[:5]  # seeded


def test_result_copies_take_the_asked_share_of_slots_spread_evenly():
    demos = tool_demonstrations(tool_task(), "train", 30, direct_rate=0.5)
    rows = with_result_copies(demos, 1 / 3, seed=0)
    assert len(rows) == 30
    copies = [i for i, r in enumerate(rows) if r["messages"][0]["role"] == "tool"]
    assert copies == list(range(2, 30, 3))  # every third slot
    assert [rows[i] for i in copies] == result_copy_demonstrations(10, seed=0)
    assert [r for r in rows if r["messages"][0]["role"] != "tool"] == demos[:20]  # the rest, in order
    assert with_result_copies(demos, 0.0) == demos
    with pytest.raises(ValueError, match="share"):
        with_result_copies(demos, 1.0)


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_direct_rate_out_of_range_is_refused(rate):
    with pytest.raises(ValueError, match="direct_rate"):
        tool_demonstrations(tool_task(), "train", 4, direct_rate=rate)


def test_accuracy_scores_the_final_answer_and_counts_tool_use():
    import re

    from posttrain.testing import ScriptedTurnsEngine, build_tokenizer

    tokenizer = build_tokenizer("tools")
    rows = tool_prompts(tool_task(), "test", 6)

    def reply(context: str) -> str:
        a, b = (int(x) for x in re.findall(r"What is (\d+)\*(\d+)\?", context)[0])
        if a % 2:  # odd first factor: answer directly, one too high
            return f"{a * b + 1}<|im_end|>"
        if "<|im_start|>tool" not in context:
            return f'<tool_call>{{"name": "multiply", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call><|im_end|>'
        return re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", context)[-1] + "<|im_end|>"

    result = tool_use_accuracy(None, tokenizer, rows, engine=ScriptedTurnsEngine(tokenizer, reply))
    even = sum(int(r["prompt"][0]["content"].split()[2].split("*")[0]) % 2 == 0 for r in rows) / len(rows)
    assert 0 < even < 1
    assert result.accuracy == pytest.approx(even) and result.tool_use == pytest.approx(even)


def test_copying_says_where_tool_calling_episodes_went_wrong():
    from posttrain.tasks.tool_use import ToolEvalResult

    def episode(result: str, answer: str, called: bool = True) -> list[dict]:
        call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {}}}]}
        turns = [call, {"role": "tool", "name": "multiply", "content": result}] if called else []
        return [{"role": "user", "content": "What is ?"}, *turns, {"role": "assistant", "content": answer}]

    samples = [
        ("q", episode("225", "225"), "225"),  # three digits, copied
        ("q", episode("225", "525"), "225"),  # three digits, miscopied
        ("q", episode("1786", "1786"), "1786"),  # four digits, copied
        ("q", episode("1700", "1700"), "1786"),  # wrong arguments: the tool gave another number
        ("q", episode("", "99", called=False), "1786"),  # answered directly: not counted
    ]
    shares = ToolEvalResult(accuracy=0.4, tool_use=0.8, samples=samples).copying()
    assert shares == {"right_arguments": 3 / 4, "copied_3": 1 / 2, "copied_4": 1.0}
    assert ToolEvalResult(0.0, 0.0, [("q", episode("", "9", called=False), "1")]).copying() == {"right_arguments": None, "copied_3": None, "copied_4": None}


@pytest.mark.parametrize("kind", ["sentence", "tool_result", "episode"])
def test_copy_accuracy_asks_in_each_format_and_scores_exact_repeats(kind, monkeypatch):
    import re

    from posttrain.rollout.sampling import Completion
    from posttrain.tasks import tool_use
    from posttrain.testing import build_tokenizer

    tokenizer = build_tokenizer("tools")
    seen = []

    class EchoEveryOther:  # repeats the prompt's number for even rows, a wrong one for odd rows
        def __init__(self, model, tokenizer, batch_size):
            pass

        def generate(self, prompts, options):
            assert not options.do_sample and options.stop_token_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
            texts = [tokenizer.decode(ids) for ids in prompts]
            seen.extend(texts)
            numbers = [re.findall(r"\d+", text)[-1] for text in texts]
            return [Completion([], number if i % 2 == 0 else number + "1", "eos") for i, number in enumerate(numbers)]

    monkeypatch.setattr(tool_use, "HFGenerationEngine", EchoEveryOther)
    assert tool_use.copy_accuracy(None, tokenizer, kind, n=10) == 0.5
    if kind == "sentence":
        assert all(re.fullmatch(r"Note \d{3,4}\. Say it again:", text) for text in seen)
    elif kind == "tool_result":
        assert all(re.fullmatch(r"<\|im_start\|>tool\n\d{3,4}<\|im_end\|>\n<\|im_start\|>assistant\n", text) for text in seen)
    else:  # the first held-out questions, each call with its numbers, the product as the result
        questions = tool_prompts(tool_task(), "test", 10)
        for text, row in zip(seen, questions):
            a, b = re.search(r"What is (\d+)\*(\d+)\?", text).groups()
            assert row["prompt"][0]["content"] == f"What is {a}*{b}?" and "- multiply(a, b): Multiply two integers." in text
            ending = rf'"arguments": {{"a": {a}, "b": {b}}}}}</tool_call><\|im_end\|>\n<\|im_start\|>tool\n{row["answer"]}<\|im_end\|>\n<\|im_start\|>assistant\n$'
            assert re.search(ending, text), text
    with pytest.raises(ValueError, match="kind"):
        tool_use.copy_accuracy(None, tokenizer, "question")
