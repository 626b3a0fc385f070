"""Distillation rows: prompt-completion rows split where SFT starts training, prompt-only rows
without completions, cut completions counted."""

from __future__ import annotations

from posttrain.data.distill import prepare_distillation_data
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions


def test_prompt_completion_rows_split_where_sft_trains(chatml):
    rows = [{"prompt": "What is 2+3?", "completion": " 5"}, {"prompt": "Hello", "completion": " world, how are you"}]
    data = prepare_distillation_data(rows, chatml, max_completion_length=64)
    sft = prepare_lm_data(rows, chatml, LMDataOptions(loss_mode="completion", max_length=None)).examples
    assert data.has_completions
    for item, example in zip(data.items, sft):
        first = next(i for i, w in enumerate(example["loss_weights"]) if w)
        assert item["prompt_ids"] == list(example["input_ids"][:first])
        assert item["completion_ids"] == list(example["input_ids"][first:])
        assert item["completion_ids"][-1] == chatml.eos_token_id  # the student learns to stop
        assert all(item["completion_mask"])


def test_conversations_keep_the_end_of_turn_and_prompt_with_the_generation_prompt(chatml):
    rows = [{"prompt": [{"role": "user", "content": "What is 2+3?"}], "completion": [{"role": "assistant", "content": "5"}]}]
    item = prepare_distillation_data(rows, chatml, max_completion_length=64).items[0]
    assert chatml.decode(item["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert chatml.decode(item["completion_ids"]) == "5<|im_end|>"


def test_system_prompt_turns_string_rows_into_conversations(chatml):
    rows = [{"prompt": "What is 2+3?", "completion": "5"}]
    data = prepare_distillation_data(rows, chatml, max_completion_length=64, system_prompt="Answer briefly.")
    item = data.items[0]
    assert data.data_format.conversational
    assert chatml.decode(item["prompt_ids"]).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    assert chatml.decode(item["completion_ids"]) == "5<|im_end|>"


def test_long_completions_are_cut_and_counted(chatml):
    rows = [{"prompt": "Hello", "completion": " world, how are you today"}, {"prompt": "Hi", "completion": " 5"}]
    full = prepare_distillation_data(rows, chatml, max_completion_length=64).items
    data = prepare_distillation_data(rows, chatml, max_completion_length=3)
    assert [len(item["completion_ids"]) for item in data.items] == [3, min(3, len(full[1]["completion_ids"]))]
    assert data.items[0]["completion_ids"] == full[0]["completion_ids"][:3]
    lost = sum(len(item["completion_ids"]) - 3 for item in full if len(item["completion_ids"]) > 3)
    cut = sum(len(item["completion_ids"]) > 3 for item in full)
    assert data.lines()[0] == f"cut {cut} completion(s) to max_completion_length, losing {lost} token(s)"


def test_prompt_only_rows_have_no_completions(chatml):
    data = prepare_distillation_data([{"prompt": "What is 2+3?", "answer": "5"}], chatml, max_completion_length=8)
    assert not data.has_completions
    assert data.items[0]["completion_ids"] is None and data.items[0]["columns"] == {}
    assert data.items[0]["prompt_ids"] == chatml("What is 2+3?")["input_ids"]
