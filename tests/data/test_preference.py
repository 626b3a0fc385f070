"""Preference pairs and unpaired rows become the same token ids and loss weights as SFT
prompt-completion rows; implicit prompts, truncation drops and pair -> KTO conversion."""

from __future__ import annotations

import pytest

from posttrain.data import formats
from posttrain.data.errors import DataFormatError
from posttrain.data.preference import prepare_preference_pairs, prepare_unpaired, split_implicit_prompt
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions

OPTIONS = LMDataOptions(loss_mode="completion")
USER = [{"role": "user", "content": "What is 7+7?"}]


def _ids(example) -> tuple[list[int], list[float]]:
    return list(example["input_ids"]), list(example["loss_weights"])


def test_each_side_is_tokenized_like_the_sft_row(chatml):
    pair = {"prompt": "What is 7+7?", "chosen": " 14", "rejected": " 15"}
    item = prepare_preference_pairs([pair], chatml, OPTIONS).items[0]
    for side in ("chosen", "rejected"):
        sft = prepare_lm_data([{"prompt": pair["prompt"], "completion": pair[side]}], chatml, OPTIONS).examples[0]
        assert _ids(item[side]) == _ids(sft)
    # trained: the completion and its EOS, nothing of the prompt
    ids, weights = _ids(item["chosen"])
    assert ids[-1] == chatml.eos_token_id and weights[-1] == 1.0
    assert chatml.decode([t for t, w in zip(ids, weights) if w]) == " 14" + chatml.eos_token


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("What is 7+7? 14", "What is 7+7? 15", ("What is 7+7?", " 14", " 15")),  # never split "14"
        ("What is 2+2? 4", "What is 2+2? 45", ("What is 2+2?", " 4", " 45")),  # one answer a prefix of the other
        ("Q:\nA", "Q:\nB", ("Q:", "\nA", "\nB")),
    ],
)
def test_implicit_string_prompt_ends_at_a_word_boundary(chosen, rejected, expected):
    assert split_implicit_prompt(chosen, rejected, 0) == expected


def test_implicit_prompt_gives_the_explicit_tokens(chatml):
    explicit = {"prompt": "What is 7+7?", "chosen": " 14", "rejected": " 15"}
    implicit = {"chosen": "What is 7+7? 14", "rejected": "What is 7+7? 15"}
    a, b = (prepare_preference_pairs([row], chatml, OPTIONS).items[0] for row in (explicit, implicit))
    assert _ids(a["chosen"]) == _ids(b["chosen"]) and _ids(a["rejected"]) == _ids(b["rejected"])

    conversation = {"chosen": USER + [{"role": "assistant", "content": "14"}], "rejected": USER + [{"role": "assistant", "content": "15"}]}
    messages = {"prompt": USER, "chosen": conversation["chosen"][1:], "rejected": conversation["rejected"][1:]}
    a, b = (prepare_preference_pairs([row], chatml, OPTIONS).items[0] for row in (messages, conversation))
    assert _ids(a["chosen"]) == _ids(b["chosen"]) and _ids(a["rejected"]) == _ids(b["rejected"])


def test_implicit_prompt_needs_a_shared_prefix():
    with pytest.raises(DataFormatError) as error:
        split_implicit_prompt("Paris", "London", 3)
    assert "row 3" in str(error.value) and "add a 'prompt' column" in str(error.value)


def test_pair_losing_a_completion_to_truncation_is_dropped_and_counted(chatml):
    long_prompt = "What is " + " + ".join(["7"] * 30) + "?"
    rows = [{"prompt": "What is 7+7?", "chosen": " 14", "rejected": " 15", "margin": 2}, {"prompt": long_prompt, "chosen": " 210", "rejected": " 211"}]
    prepared = prepare_preference_pairs(rows, chatml, LMDataOptions(loss_mode="completion", max_length=20))
    assert [item["row"] for item in prepared.items] == [0]
    assert prepared.items[0]["margin"] == 2.0
    assert prepared.dropped_pairs == 1
    assert any("dropped 1 row(s)" in line for line in prepared.lines())


def test_pairs_become_one_desirable_and_one_undesirable_row(chatml):
    pairs = [{"chosen": "What is 7+7? 14", "rejected": "What is 7+7? 15"}, {"prompt": "What is 1+1?", "chosen": " 2", "rejected": " 3"}]
    paired = prepare_preference_pairs(pairs, chatml, OPTIONS).items
    unpaired = prepare_unpaired(pairs, chatml, OPTIONS)
    assert unpaired.data_format == formats.DataFormat(formats.UNPAIRED, False)
    assert [item["label"] for item in unpaired.items] == [True, False, True, False]
    assert [item["row"] for item in unpaired.items] == [0, 0, 1, 1]  # the input row, for messages
    for i, pair in enumerate(paired):
        assert _ids(unpaired.items[2 * i]["example"]) == _ids(pair["chosen"])
        assert _ids(unpaired.items[2 * i + 1]["example"]) == _ids(pair["rejected"])


@pytest.mark.parametrize("kind", ["chatml", "no_template"])  # no_template adds a BOS, which is kept
def test_max_prompt_length_keeps_the_completion_of_a_long_prompt(tokenizers, kind):
    tokenizer = tokenizers[kind]
    long_prompt = "What is " + " + ".join(["7"] * 30) + "?"
    row = {"prompt": long_prompt, "chosen": " 210", "rejected": " 211"}
    options = LMDataOptions(loss_mode="completion", max_length=24, max_prompt_length=12)
    prepared = prepare_preference_pairs([row], tokenizer, options)
    assert prepared.dropped_pairs == 0  # without max_prompt_length the pair is lost (test above)
    full = prepare_preference_pairs([row], tokenizer, LMDataOptions(loss_mode="completion", max_length=None)).items[0]
    for side in ("chosen", "rejected"):
        ids, weights = _ids(prepared.items[0][side])
        full_ids, full_weights = _ids(full[side])
        start = weights.index(1.0)
        assert start == 12  # the prompt is now exactly max_prompt_length tokens
        assert ids[start:] == full_ids[full_weights.index(1.0):]  # the whole completion and its EOS
        assert ids[1:start] == full_ids[full_weights.index(1.0) - 11 : full_weights.index(1.0)]  # the prompt's end
        assert ids[0] == (tokenizer.bos_token_id if kind == "no_template" else full_ids[full_weights.index(1.0) - 12])
    assert any("shortened 2 prompt(s) to max_prompt_length" in line for line in prepared.lines())
