"""Must-show 2: golden assistant masks of a 3-turn conversation under every fixture template.

Each golden is the conversation rendered token by token with the trained tokens inside ``[[ ]]``
(``posttrain.data.inspect.render_plain``; a newline token shows as ``\\n`` plus a line break),
plus the exact trained token positions. Derived by hand from the rules in
``posttrain/data/chat.py``: an assistant turn's span starts after the ``<|im_start|>assistant\\n``
header and ends with its ``<|im_end|>``; the newline after ``<|im_end|>`` is template glue and
is not trained; in ``all`` mode every token but the first is trained.
"""

from __future__ import annotations

import pytest

from posttrain.data import formats
from posttrain.data.errors import ChatTemplateError
from posttrain.data.inspect import render_plain
from posttrain.data.tokenize import LMDataOptions, tokenize_row

MESSAGES = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "<think>add</think>5"},
    {"role": "user", "content": "And 4+4?"},
    {"role": "assistant", "content": "8"},
    {"role": "user", "content": "Sum?"},
    {"role": "assistant", "content": "13"},
]

NL = "\\n\n"  # how render_plain shows one newline token
U1 = f"<|im_start|>user{NL}What is 2+3?<|im_end|>{NL}"
U2 = f"<|im_start|>user{NL}And 4+4?<|im_end|>{NL}"
U3 = f"<|im_start|>user{NL}Sum?<|im_end|>{NL}"
HEAD = f"<|im_start|>assistant{NL}"
# Token positions (ChatML fixture tokenizer): turn 1 "<think>add</think>5<|im_end|>" is tokens
# 18-28 ("<", "think", ">", "add"..., "5", "<|im_end|>"), turn 2 "8<|im_end|>" is 48-49, turn 3
# "1", "3", "<|im_end|>" is 65-67; 69 tokens in all.
TURN_1, TURN_2, TURN_3 = list(range(18, 29)), [48, 49], [65, 66, 67]

CHATML_GOLDEN = {
    "all": (
        f"<|im_start|>[[user{NL}What is 2+3?<|im_end|>{NL}{HEAD}<think>add</think>5<|im_end|>{NL}"
        f"{U2}{HEAD}8<|im_end|>{NL}{U3}{HEAD}13<|im_end|>{NL}]]",
        list(range(1, 69)),
    ),
    "assistant": (
        f"{U1}{HEAD}[[<think>add</think>5<|im_end|>]]{NL}{U2}{HEAD}[[8<|im_end|>]]{NL}{U3}{HEAD}[[13<|im_end|>]]{NL}",
        TURN_1 + TURN_2 + TURN_3,
    ),
    "last_assistant": (
        f"{U1}{HEAD}<think>add</think>5<|im_end|>{NL}{U2}{HEAD}8<|im_end|>{NL}{U3}{HEAD}[[13<|im_end|>]]{NL}",
        TURN_3,
    ),
}

# The non-prefix template drops the <think> block of turn 1 once a later user turn exists, so
# turn 1 is 9 tokens shorter in later renderings; trained turns become one example each,
# rendered exactly as the model sees them when it produces that turn.
NP_U1_A1 = f"{U1}{HEAD}5<|im_end|>{NL}"
NON_PREFIX_GOLDEN = {
    "all": [(f"<|im_start|>[[user{NL}What is 2+3?<|im_end|>{NL}{HEAD}5<|im_end|>{NL}{U2}{HEAD}8<|im_end|>{NL}{U3}{HEAD}13<|im_end|>{NL}]]", list(range(1, 60)))],
    "assistant": [
        (f"{U1}{HEAD}[[<think>add</think>5<|im_end|>]]{NL}", TURN_1),
        (f"{NP_U1_A1}{U2}{HEAD}[[8<|im_end|>]]{NL}", [39, 40]),
        (f"{NP_U1_A1}{U2}{HEAD}8<|im_end|>{NL}{U3}{HEAD}[[13<|im_end|>]]{NL}", [56, 57, 58]),
    ],
    "last_assistant": [(f"{NP_U1_A1}{U2}{HEAD}8<|im_end|>{NL}{U3}{HEAD}[[13<|im_end|>]]{NL}", [56, 57, 58])],
}


def _examples(tokenizer, mode, messages=MESSAGES, turn_weights="uniform"):
    row = {"messages": messages}
    data_format = formats.detect_format(["messages"], row)
    options = LMDataOptions(loss_mode=mode, turn_weights=turn_weights, max_length=None)
    examples, report = tokenize_row(row, 0, tokenizer, data_format, mode, options)
    return examples, report


def _trained_positions(example):
    return [i for i, w in enumerate(example["loss_weights"]) if w]


@pytest.mark.parametrize("kind", ["chatml", "pad_is_eos"])
@pytest.mark.parametrize("mode", ["all", "assistant", "last_assistant"])
def test_prefix_preserving_templates(tokenizers, kind, mode):
    tokenizer = tokenizers[kind]
    examples, report = _examples(tokenizer, mode)
    golden_text, golden_positions = CHATML_GOLDEN[mode]
    assert len(examples) == 1 and report.split_rows == 0
    assert render_plain(tokenizer, examples[0]) == golden_text
    assert _trained_positions(examples[0]) == golden_positions
    # Every trained assistant turn ends with its end-of-turn token, and that token is trained.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = examples[0]["input_ids"]
    assert len(ids) == 69
    for turn in (TURN_1, TURN_2, TURN_3):
        assert ids[turn[-1]] == im_end


@pytest.mark.parametrize("mode", ["all", "assistant", "last_assistant"])
def test_non_prefix_template_splits_per_turn(tokenizers, mode):
    tokenizer = tokenizers["non_prefix"]
    examples, report = _examples(tokenizer, mode)
    golden = NON_PREFIX_GOLDEN[mode]
    assert [(render_plain(tokenizer, e), _trained_positions(e)) for e in examples] == golden
    assert report.split_rows == (1 if mode == "assistant" else 0)


def test_turn_index_and_decay_weights(chatml):
    (example,), _ = _examples(chatml, "assistant", turn_weights="decay:0.5")
    weights, turns = example["loss_weights"], example["turn_index"]
    # decay:0.5 over three turns: 0.25, 0.5, 1 from the first to the last.
    assert [weights[p] for p in TURN_1] == [0.25] * len(TURN_1)
    assert [weights[p] for p in TURN_2] == [0.5, 0.5]
    assert [weights[p] for p in TURN_3] == [1.0, 1.0, 1.0]
    assert {turns[p] for p in TURN_1} == {0} and {turns[p] for p in TURN_3} == {2}
    assert sum(1 for t in turns if t >= 0) == len(TURN_1 + TURN_2 + TURN_3)


def test_explicit_turn_weights_and_all_mode_turn_index(chatml):
    (example,), _ = _examples(chatml, "assistant", turn_weights=[0.0, 2.0, 1.0])
    assert _trained_positions(example) == TURN_2 + TURN_3
    assert example["loss_weights"][48] == 2.0
    # In "all" mode every token is trained, but per-turn losses still know the assistant turns.
    (example,), _ = _examples(chatml, "all")
    assert [p for p, t in enumerate(example["turn_index"]) if t >= 0] == TURN_1 + TURN_2 + TURN_3


def test_template_without_chat_template_is_refused(tokenizers):
    with pytest.raises(ChatTemplateError, match="needs a chat template"):
        _examples(tokenizers["no_template"], "assistant")


def test_conversational_prompt_completion_trains_on_completion(chatml):
    row = {"prompt": MESSAGES[:5], "completion": MESSAGES[5:]}
    data_format = formats.detect_format(["prompt", "completion"], row)
    examples, _ = tokenize_row(row, 0, chatml, data_format, "completion", LMDataOptions(max_length=None))
    assert _trained_positions(examples[0]) == TURN_3
