"""Sampling options refuse bad values by name, and prompts encode as training renders them."""

from __future__ import annotations

import dataclasses

import pytest

from posttrain.data.errors import ChatTemplateError
from posttrain.rollout import SamplingOptions, encode_prompts


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_completion_length": 0}, "max_completion_length: must be a positive integer"),
        ({"max_completion_length": 8.0}, "max_completion_length: must be a positive integer"),
        ({"temperature": 0.0}, "temperature: must be a number > 0 .use do_sample=False"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, r"top_p: must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p: must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k: must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k: must be an integer >= 0"),
        ({"min_p": 1.5}, r"min_p: must be in \[0, 1\] or None"),
        ({"repetition_penalty": 0}, "repetition_penalty: must be a number > 0"),
        ({"do_sample": "yes"}, "do_sample: must be True or False"),
        ({"stop_strings": ["</answer>", ""]}, "stop_strings: every stop string must be a non-empty string"),
        ({"stop_token_ids": [3, -1]}, "stop_token_ids: every stop token id must be an integer >= 0"),
        ({"generation_kwargs": {"max_new_tokens": 5}}, "generation_kwargs: 'max_new_tokens' is set by the rollout engine; use max_completion_length"),
        ({"generation_kwargs": {"eos_token_id": 5}}, "generation_kwargs: 'eos_token_id' is set by the rollout engine; use stop_token_ids"),
        ({"generation_kwargs": {"num_return_sequences": 4}}, "generation_kwargs: .* use num_generations"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=f"SamplingOptions.{message}"):
        SamplingOptions(**{"max_completion_length": 8, **options})


def test_options_are_normalised():
    options = SamplingOptions(max_completion_length=4, stop_strings="</answer>", stop_token_ids=[7, 9], top_k=None)
    assert options.stop_strings == ("</answer>",) and options.stop_token_ids == (7, 9)
    assert options.generation_kwargs == {} and options.chat_template_kwargs == {}
    with pytest.raises(ValueError, match="SamplingOptions.top_p"):  # a derived copy is validated too
        dataclasses.replace(options, top_p=2.0)


def test_string_prompts_get_special_tokens_and_messages_the_chat_template(tokenizers):
    no_template, chatml = tokenizers["no_template"], tokenizers["chatml"]
    [ids] = encode_prompts(no_template, ["What is 3+4?"])
    assert ids[0] == no_template.bos_token_id and no_template.decode(ids[1:]) == "What is 3+4?"
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 3+4?"}]
    [ids] = encode_prompts(chatml, [messages])
    assert chatml.decode(ids) == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_bad_prompts_are_refused(tokenizers):
    chatml = tokenizers["chatml"]
    with pytest.raises(ChatTemplateError, match="no chat template|has none"):
        encode_prompts(tokenizers["no_template"], [[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="prompt 1, message 0: expected a dict with 'role' and 'content'"):
        encode_prompts(chatml, ["fine", [{"text": "hi"}]])
    with pytest.raises(TypeError, match="prompt 0: expected a string or a list of messages, got int"):
        encode_prompts(chatml, [3])
    with pytest.raises(ValueError, match="prompt 0 is empty after tokenization"):
        encode_prompts(chatml, [""])
    with pytest.raises(TypeError, match="not a single prompt"):
        encode_prompts(chatml, "What is 3+4?")
