"""Must-show 1 (EOS) and the prompt/completion, truncation and dropping rules of the data layer."""

from __future__ import annotations

import pytest

from posttrain.data import formats
from posttrain.data.collate import Collator
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions, tokenize_row


def _one(tokenizer, row, mode="auto", **options):
    data_format = formats.detect_format(list(row), row)
    from posttrain.data.tokenize import resolve_loss_mode

    mode = resolve_loss_mode(mode, data_format)
    examples, report = tokenize_row(row, 0, tokenizer, data_format, mode, LMDataOptions(loss_mode=mode, **options))
    return examples, report


@pytest.mark.parametrize("kind", ["chatml", "pad_is_eos", "no_template"])
def test_prompt_completion_last_label_is_eos(tokenizers, kind):
    tokenizer = tokenizers[kind]
    (example,), report = _one(tokenizer, {"prompt": "What is 2+3?", "completion": " 5"})
    eos = tokenizer.eos_token_id
    assert example["input_ids"][-1] == eos and example["loss_weights"][-1] == 1.0
    assert report.eos_appended == 1
    # The batch keeps that weight even when the pad token *is* EOS and the row is padded.
    other = {"input_ids": example["input_ids"] + [5, 6, 7], "loss_weights": example["loss_weights"] + [1.0] * 3,
             "turn_index": example["turn_index"] + [0] * 3, "row": 1}
    batch = Collator("padded", pad_token_id=tokenizer.pad_token_id)([example, other])
    n = len(example["input_ids"])
    assert batch["loss_weights"][0, n - 1] == 1.0 and batch["input_ids"][0, n - 1] == eos
    assert batch["loss_weights"][0, n:].sum() == 0  # the pads after it are not trained


def test_completion_mode_weights_and_all_mode(chatml):
    (example,), _ = _one(chatml, {"prompt": "What is 2+3?", "completion": " 5"})
    tokens = chatml.convert_ids_to_tokens(example["input_ids"])
    trained = [t for t, w in zip(tokens, example["loss_weights"]) if w]
    assert trained == ["Ġ", "5", "<|endoftext|>"]
    (example,), _ = _one(chatml, {"prompt": "What is 2+3?", "completion": " 5"}, mode="all")
    assert example["loss_weights"] == [0.0] + [1.0] * (len(example["input_ids"]) - 1)


def test_eos_never_doubled(chatml):
    (example,), report = _one(chatml, {"prompt": "Hi?", "completion": " 5<|endoftext|>"})
    assert example["input_ids"].count(chatml.eos_token_id) == 1 and report.eos_appended == 0
    (example,), report = _one(chatml, {"text": "plain text"})
    assert example["input_ids"][-1] == chatml.eos_token_id and report.eos_appended == 1
    (example,), report = _one(chatml, {"text": "plain text"}, add_eos=False)
    assert example["input_ids"][-1] != chatml.eos_token_id and report.eos_appended == 0


def test_bos_tokenizer_keeps_bos_untrained(tokenizers):
    tokenizer = tokenizers["no_template"]
    (example,), _ = _one(tokenizer, {"text": "plain text"})
    assert example["input_ids"][0] == tokenizer.bos_token_id and example["loss_weights"][0] == 0.0


def test_boundary_merge_is_counted(chatml):
    # "is" + "?" style merges: a prompt ending in a space merges with the completion's first word.
    (example,), report = _one(chatml, {"prompt": "What is", "completion": " 2+3?"})
    assert report.boundary_mismatch_rows == 0
    (example,), report = _one(chatml, {"prompt": "What i", "completion": "s 2+3?"})
    assert report.boundary_mismatch_rows == 1
    tokens = chatml.convert_ids_to_tokens(example["input_ids"])
    # The merged token "Ġis" holds completion text, so it is trained on.
    assert [t for t, w in zip(tokens, example["loss_weights"]) if w][0] == "Ġis"


def test_truncation_and_dropping_are_counted(chatml):
    rows = [{"prompt": "What is 12+13?", "completion": " 25"}, {"prompt": "What is 1+1?" * 8, "completion": " 2"}]
    prepared = prepare_lm_data(rows, chatml, LMDataOptions(max_length=16))
    # Row 1's prompt alone exceeds 16 tokens: truncation leaves no trained token, so it is dropped.
    assert prepared.report.truncated_rows == 1 and prepared.report.dropped_no_loss == 1
    assert len(prepared.examples) == 1 and prepared.examples[0]["row"] == 0
    prepared = prepare_lm_data(rows, chatml, LMDataOptions(max_length=16, overlong="drop"))
    assert prepared.report.dropped_overlong == 1 and prepared.report.truncated_rows == 0
    assert any("dropped" in line for line in prepared.report.lines())


def test_all_rows_unusable_is_an_error(chatml):
    with pytest.raises(ValueError, match="no row has any token left"):
        prepare_lm_data([{"prompt": "What is 1+1?" * 8, "completion": " 2"}], chatml, LMDataOptions(max_length=8))
