"""A forward pass in which completions that share a prompt share its computation.

GRPO samples ``G`` completions of every prompt. Laid out as ``G`` separate prompt + completion
sequences, the prompt runs through the model ``G`` times although its tokens carry no loss and
its hidden states are the same each time. Here each prompt runs once, its keys and values go to a
transformers ``DynamicCache`` (with autograd: the cache is built by differentiable ops), the
cache rows are repeated for the completions of each prompt (``Cache.batch_select_indices``), and
the completions run after it, reading the prompt through the cache as they would read it in one
sequence. Gradients flow back through the repeated keys and values into the one prompt pass, so
they are the sums the separate sequences give (tested against packed rows). Prompts are
left-padded, completions right-padded; positions continue from each prompt's length.

It needs the model's split head (decoder, then LM head, see
:class:`~posttrain.models.causal_lm.TokenLogProbs`) and a cache in training, which transformers
turns off under gradient checkpointing: :func:`prompt_groups_problem` says when it does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows as transformers' ``generate`` makes them: 0, 1, ... from
    each row's first real token, 0 on padding. ``(B, T) -> (B, T)`` long."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


@dataclass
class PromptGroups:
    """Completions grouped by prompt, each prompt once.

    Attributes:
        prompt_ids: ``(P, Tp)`` long, left-padded.
        prompt_mask: ``(P, Tp)`` long, 1 on real prompt tokens.
        completion_ids: ``(S, L)`` long, right-padded.
        completion_lengths: ``(S,)`` long.
        prompt_of: ``(S,)`` long, the row of ``prompt_ids`` each completion continues.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_lengths: torch.Tensor
    prompt_of: torch.Tensor

    @classmethod
    def from_lists(cls, prompts: list[list[int]], completions: list[list[int]], pad_token_id: int) -> PromptGroups:
        """Group ``completions`` (one per entry of ``prompts``) by equal prompt."""
        unique: dict[tuple[int, ...], int] = {}
        prompt_of = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        distinct = list(unique)
        width = max(len(p) for p in distinct)
        longest = max(len(c) for c in completions)
        return cls(
            prompt_ids=torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in distinct], dtype=torch.long),
            prompt_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in distinct], dtype=torch.long),
            completion_ids=torch.tensor([list(c) + [pad_token_id] * (longest - len(c)) for c in completions], dtype=torch.long),
            completion_lengths=torch.tensor([len(c) for c in completions], dtype=torch.long),
            prompt_of=torch.tensor(prompt_of, dtype=torch.long),
        )

    def to(self, device) -> PromptGroups:
        return PromptGroups(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def num_tokens(self) -> int:
        """Tokens the forward pass runs: each prompt once, every completion."""
        return int(self.prompt_mask.sum()) + int(self.completion_lengths.sum())


def plain_cache_problem(model) -> str | None:
    """Why a prompt's cache rows of ``model`` cannot be computed once and repeated, or None: the
    model must be a decoder whose cache holds plain full-attention layers (keys and values per
    token, nothing else)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return f"{type(model).__name__} is an encoder-decoder model"
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
    if kinds != {DynamicLayer.__name__}:
        return f"its cache has {', '.join(sorted(kinds))} layers"
    return None


def prompt_groups_problem(model, gradient_checkpointing: bool) -> str | None:
    """Why :func:`prompt_group_states` cannot run on ``model``, or None."""
    if gradient_checkpointing:
        return "gradient checkpointing turns transformers' cache off in training"
    return plain_cache_problem(model)


def prompt_group_states(decoder, groups: PromptGroups, config) -> torch.Tensor:
    """``(S, L, H)`` last hidden states, row ``s`` column ``j`` the one that predicts completion
    token ``j`` of completion ``s``: the prompt's last state for ``j = 0``, the completion's
    state ``j - 1`` after it. ``decoder`` is the model body (``model.get_decoder()``)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    prompt_mask = groups.prompt_mask
    prompt_states = decoder(
        input_ids=groups.prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_of(prompt_mask), cache=cache, use_cache=True
    ).last_hidden_state  # (P, Tp, H)
    cache.batch_select_indices(groups.prompt_of)
    length = groups.completion_ids.shape[1]
    steps = torch.arange(length, device=prompt_mask.device)
    inside = (steps < groups.completion_lengths.unsqueeze(1)).long()
    attention_mask = torch.cat([prompt_mask[groups.prompt_of], inside], dim=1)  # (S, Tp + L)
    positions = prompt_mask.sum(1)[groups.prompt_of].unsqueeze(1) + steps  # continue after the prompt
    completion_states = decoder(
        input_ids=groups.completion_ids, attention_mask=attention_mask, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state  # (S, L, H)
    return torch.cat([prompt_states[groups.prompt_of, -1:], completion_states[:, :-1]], dim=1)
