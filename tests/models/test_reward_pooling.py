"""Reward pooling: the reward of a sequence does not depend on the padding around it, also when
the pad token is EOS; and the scorer tokenizes exactly as the reward trainer does."""

from __future__ import annotations

import pytest
import torch

from posttrain import testing
from posttrain.data.errors import ChatTemplateError
from posttrain.models.reward import RewardScorer, check_reward_head, padded_batch, pooled_rewards, pooling_of
from posttrain.testing import assert_close_to_scale

PROMPTS = ["What is 3+4?", "What is 47+38?", "Hello!"]
COMPLETIONS = [" 7", " 85", " How are you today? I am fine."]


def _examples(tokenizer):
    """Token ids of prompt + completion + EOS, the way training builds them: lengths differ so
    the shorter rows get padded, and every row ends with EOS."""
    scorer = RewardScorer(testing.build_sequence_classifier("llama", tokenizer), tokenizer)
    return [scorer.tokenize(p, c) for p, c in zip(PROMPTS, COMPLETIONS)]


def _alone(model, example) -> torch.Tensor:
    ids = torch.tensor([example["input_ids"]])
    return pooled_rewards(model, ids, torch.ones_like(ids))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_pad_is_eos_padded_equals_alone(arch, tokenizers):
    tokenizer = tokenizers["pad_is_eos"]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    model = testing.build_sequence_classifier(arch, tokenizer).eval()
    examples = _examples(tokenizer)
    assert all(e["input_ids"][-1] == tokenizer.eos_token_id for e in examples)
    batch = padded_batch(examples, tokenizer.pad_token_id)
    assert len({len(e["input_ids"]) for e in examples}) == 3  # two rows really are padded
    with torch.no_grad():
        padded = pooled_rewards(model, batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([_alone(model, e) for e in examples])
        # Independent reference: Hugging Face's own forward on one unpadded row pools at the
        # last token when it has no pad id to search for.
        model.config.pad_token_id = None
        reference = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[:, 0] for e in examples])
    assert_close_to_scale(padded, alone)
    assert_close_to_scale(alone, reference)


def test_hf_pooling_misses_the_final_eos_when_pad_is_eos(tokenizers):
    """Why we pool ourselves: with pad == EOS, Hugging Face's "rightmost non-pad token" rule
    reads the reward one token before the final EOS (transformers 5.23)."""
    tokenizer = tokenizers["pad_is_eos"]
    model = testing.build_sequence_classifier("llama", tokenizer).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    examples = _examples(tokenizer)
    batch = padded_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = pooled_rewards(model, batch["input_ids"], batch["attention_mask"])
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        before_eos = [_alone(model, {"input_ids": e["input_ids"][:-1]}) for e in examples]
    assert not torch.allclose(ours, theirs, atol=1e-3)
    assert_close_to_scale(theirs, torch.cat(before_eos))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_matches_hf_pooling_when_pad_is_not_eos(arch, chatml):
    model = testing.build_sequence_classifier(arch, chatml).eval()
    batch = padded_batch(_examples(chatml), chatml.pad_token_id)
    with torch.no_grad():
        ours = pooled_rewards(model, batch["input_ids"], batch["attention_mask"])
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert_close_to_scale(ours, theirs)


def test_encoder_padded_equals_alone(tokenizers):
    tokenizer = tokenizers["no_template"]
    model = testing.build_sequence_classifier("bert", tokenizer).eval()
    assert pooling_of(model) == "model"
    scorer = RewardScorer(model, tokenizer)
    examples = [scorer.tokenize(p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    # encoders get no EOS; the no_template tokenizer starts every row with BOS (BERT's CLS slot)
    assert all(e["input_ids"][-1] != tokenizer.eos_token_id for e in examples)
    assert all(e["input_ids"][0] == tokenizer.bos_token_id for e in examples)
    batch = padded_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        padded = pooled_rewards(model, batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([_alone(model, e) for e in examples])
    assert_close_to_scale(padded, alone)


def test_pooling_kind_and_head_checks(chatml):
    assert pooling_of(testing.build_sequence_classifier("llama", chatml)) == "last_token"
    with pytest.raises(ValueError, match="num_labels=1"):
        check_reward_head(testing.build_sequence_classifier("llama", chatml, num_labels=2))


def test_refuses_left_padding(chatml):
    model = testing.build_sequence_classifier("llama", chatml)
    ids = torch.tensor([[5, 6, 7], [1, 5, 6]])
    with pytest.raises(ValueError, match="right-padded"):
        pooled_rewards(model, ids, torch.tensor([[1, 1, 1], [0, 1, 1]]))


def test_scorer_order_and_batching_do_not_change_scores(chatml):
    model = testing.build_sequence_classifier("llama", chatml)
    prompts, completions = PROMPTS * 2, COMPLETIONS + COMPLETIONS[::-1]
    one_by_one = RewardScorer(model, chatml, batch_size=1).score(prompts, completions)
    batched = RewardScorer(model, chatml, batch_size=4).score(prompts, completions)
    assert batched.shape == (6,) and batched.dtype == torch.float32
    assert_close_to_scale(batched, one_by_one)
    # rows 0 and 3 hold different pairs; rows 1 and 4 the same pair (" 85" is the middle one)
    assert batched[1] == pytest.approx(batched[4].item(), abs=1e-5)
    assert abs(batched[0].item() - batched[3].item()) > 1e-4
    assert model.training  # the scorer restores the mode it found


def test_scorer_conversational_string_completion_is_the_assistant_reply(chatml):
    model = testing.build_sequence_classifier("llama", chatml)
    scorer = RewardScorer(model, chatml)
    prompt = [{"role": "user", "content": "What is 3+4?"}]
    as_text = scorer.score([prompt], ["7"])
    as_messages = scorer.score([prompt], [[{"role": "assistant", "content": "7"}]])
    torch.testing.assert_close(as_text, as_messages)
    ids = scorer.tokenize(prompt, "7")["input_ids"]
    # the template's end of turn closes the sequence: "...7<|im_end|>\n"; no EOS for chats
    assert chatml.convert_ids_to_tokens(ids[-2]) == "<|im_end|>"


def test_scorer_refuses_messages_without_chat_template(tokenizers):
    tokenizer = tokenizers["no_template"]
    scorer = RewardScorer(testing.build_sequence_classifier("bert", tokenizer), tokenizer)
    with pytest.raises(ChatTemplateError, match="set chat_template"):
        scorer.score([[{"role": "user", "content": "What is 3+4?"}]], ["7"])
