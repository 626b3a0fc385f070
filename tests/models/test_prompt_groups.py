"""Each prompt once for all its completions (posttrain/models/prompt_groups.py): the completions'
log-probs, entropies and the gradients of a loss on them are those of the same sequences laid out
one per row, for rotary (Llama, Qwen2) and learned absolute positions (GPT-2), prompts of
different lengths (left padding) and completions of different lengths (right padding)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.prompt_groups import PromptGroups, prompt_groups_problem
from posttrain.testing import assert_close_to_scale, assert_tensors_close_to_scale

PROMPTS = [[5, 17, 9, 30, 2], [8, 40, 3]]  # two prompts of different lengths
COMPLETIONS = [[11, 12, 13, 14], [21], [31, 32, 33], [41, 42], [51, 52, 53, 54, 55], [61, 62, 63]]
PROMPT_OF = [0, 0, 0, 1, 1, 1]  # three completions of each prompt


def _one_per_row(module, pad_id: int):
    """Per completion ``(L,)`` stats from its own prompt + completion row (right-padded rows)."""
    rows = [PROMPTS[p] + c for p, c in zip(PROMPT_OF, COMPLETIONS)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    positions = torch.arange(width).expand(len(rows), -1)
    stats = module(ids, positions, with_stats=True)
    logps = [stats.logps[i, len(PROMPTS[p]) : len(PROMPTS[p]) + len(c)] for i, (p, c) in enumerate(zip(PROMPT_OF, COMPLETIONS))]
    entropy = [stats.entropy[i, len(PROMPTS[p]) : len(PROMPTS[p]) + len(c)] for i, (p, c) in enumerate(zip(PROMPT_OF, COMPLETIONS))]
    return logps, entropy


def _weights(completion: list[int]) -> torch.Tensor:
    return torch.linspace(0.5, 1.5, len(completion))  # a loss that weighs every token differently


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_grouped_completions_equal_one_sequence_per_row(model_path, arch):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    module = TokenLogProbs(model)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    groups = PromptGroups.from_lists([PROMPTS[p] for p in PROMPT_OF], COMPLETIONS, pad_id)
    assert groups.prompt_ids.shape == (2, 5) and groups.prompt_of.tolist() == PROMPT_OF
    assert groups.num_tokens == 8 + sum(len(c) for c in COMPLETIONS)  # each prompt counted once

    logps, entropy = _one_per_row(module, pad_id)
    sum(-(lp * _weights(c)).sum() for lp, c in zip(logps, COMPLETIONS)).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    grouped = module(groups=groups, with_stats=True)
    assert grouped.logps.shape == (6, 5)
    for row, completion in enumerate(COMPLETIONS):
        assert_close_to_scale(grouped.logps[row, : len(completion)], logps[row])
        assert_close_to_scale(grouped.entropy[row, : len(completion)], entropy[row])
        assert torch.all(grouped.logps[row, len(completion) :] == 0)  # nothing after the end
    sum(-(grouped.logps[row, : len(c)] * _weights(c)).sum() for row, c in enumerate(COMPLETIONS)).backward()
    assert_tensors_close_to_scale({n: p.grad for n, p in model.named_parameters()}, expected)


def test_what_prompt_groups_cannot_run_on(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    assert prompt_groups_problem(model, gradient_checkpointing=False) is None
    assert prompt_groups_problem(model, gradient_checkpointing=True) == "gradient checkpointing turns transformers' cache off in training"
