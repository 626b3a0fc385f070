"""PPO's critic: a value head on the hidden states of a causal backbone, and the one module that
holds policy and critic so that accelerate (DDP, FSDP) and the loop's single optimizer see both.

Layouts (``PPOConfig.critic``):

- ``copy`` (the default without LoRA): a copy of the policy's backbone (no LM head) with a new
  value head; twice the weights, no interference between the two objectives.
- a ``value_model``: the backbone of another causal model, e.g. a trained reward model
  (``AutoModelForSequenceClassification``; its ``score`` head becomes the value head, so the
  critic starts out predicting the reward model's score), or a causal LM (a new head).
- ``shared``: a head on the policy's own last hidden states. One forward gives log-probs and
  values and no second backbone is held; the value loss then also moves the policy's trunk.
- ``adapter`` (the default with LoRA): a second LoRA adapter set, ``critic``, on the policy's
  base model, plus a head. One copy of the base weights, two forwards (the critic's with its
  adapter active). Not combined with gradient checkpointing: the recomputation in the backward
  pass would run with whichever adapter is active then.

A new head starts at zero, so the first values are 0 and the value targets move it from there.

Values are aligned like :class:`~posttrain.models.causal_lm.TokenLogProbs`' log-probs:
``values[:, t]`` is the critic's estimate for the state *before* token ``t`` (the head applied to
the hidden state at ``t - 1``), the state in which token ``t`` was chosen; column 0 is 0.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import nn

from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import kept_trainable

CRITIC_LAYOUTS = ("auto", "copy", "shared", "adapter")
CRITIC_ADAPTER = "critic"


class PolicyValueOutput(NamedTuple):
    """``(B, T)`` per-token log-probs, entropies (None unless asked for) and values, all aligned
    with the input tokens. A NamedTuple so DDP's output handling walks into it."""

    logps: torch.Tensor
    entropy: torch.Tensor | None
    values: torch.Tensor


def new_value_head(hidden_size: int) -> nn.Linear:
    """A float32 ``hidden -> 1`` head with zero weight and bias: values start at 0."""
    head = nn.Linear(hidden_size, 1, bias=True, dtype=torch.float32)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def aligned_values(hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """``(B, T, H)`` hidden states -> ``(B, T)`` float32 values, ``values[:, t] = head(hidden[:, t-1])``
    and 0 in column 0."""
    weight = next(head.parameters())
    values = head(hidden[:, :-1].to(weight.dtype)).squeeze(-1).float()
    return torch.cat([torch.zeros_like(values[:, :1]), values], dim=1)


class Critic(nn.Module):
    """A value head, over its own ``backbone`` (a Hugging Face base model returning
    ``last_hidden_state``) or, with ``backbone=None``, over hidden states the caller supplies
    (the policy's trunk, or its base model with the critic adapter active)."""

    def __init__(self, head: nn.Module, backbone: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.backbone = backbone

    def forward(self, input_ids, position_ids=None, attention_mask=None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return aligned_values(hidden, self.head)


@contextmanager
def active_adapter(model, name: str):
    """Run the block with peft adapter ``name`` active, then the previous one again, every
    adapter's ``requires_grad`` unchanged (:func:`kept_trainable`)."""
    previous = model.active_adapter
    with kept_trainable(model):
        model.set_adapter(name)
    try:
        yield
    finally:
        with kept_trainable(model):
            model.set_adapter(previous)


class PolicyWithValue(TokenLogProbs):
    """The policy (a causal LM, as :class:`TokenLogProbs` wraps it) and its :class:`Critic`.

    ``forward(input_ids, position_ids, attention_mask, temperature=, with_stats=)`` returns the
    policy's :class:`~posttrain.ops.TokenStats`, as :class:`TokenLogProbs` does (generation,
    reference and old-log-prob passes use that); ``with_values=True`` returns a
    :class:`PolicyValueOutput` with the critic's values too, computed in the same forward so
    that a DDP wrapper sees every trained parameter used.

    ``layout``: ``"copy"`` (the critic has its own backbone, whatever it was made from),
    ``"shared"`` or ``"adapter"`` (see the module docstring).
    """

    def __init__(self, model: nn.Module, critic: Critic, layout: str, chunk_size: int | None = None, stats_fn=None):
        super().__init__(model, chunk_size=chunk_size, stats_fn=stats_fn)
        if (layout == "copy") != (critic.backbone is not None):
            raise ValueError(f"critic layout {layout!r} does not match a critic {'with' if critic.backbone is not None else 'without'} a backbone")
        self.critic = critic
        self.layout = layout

    def forward(
        self, input_ids, position_ids=None, attention_mask=None, *, temperature: float = 1.0, with_stats: bool = False,
        with_values: bool = False, positions: torch.Tensor | None = None,
    ):
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        shared = with_values and self.layout == "shared"
        stats, hidden = self.stats_and_hidden(inputs, temperature=temperature, with_stats=with_stats, keep_hidden=shared, positions=positions)
        if not with_values:
            return stats
        if shared:
            values = aligned_values(hidden, self.critic.head)
        elif self.layout == "adapter":
            with active_adapter(self.model, CRITIC_ADAPTER):
                values = aligned_values(self._body(inputs), self.critic.head)
        else:
            values = self.critic(input_ids, position_ids, attention_mask)
        return PolicyValueOutput(stats.logps, stats.entropy, values)


# ----------------------------------------------------------------------------- building critics


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None:
        raise ValueError(f"cannot tell the hidden size of {type(model).__name__} (config has no hidden_size)")
    return int(size)


def copy_critic(policy: nn.Module) -> Critic:
    """A critic on a copy of ``policy``'s backbone (its LoRA layers, if any, copied too, so it
    trains its own adapters) with a new head."""
    from posttrain.models.loading import is_peft_model

    causal_lm = policy.get_base_model() if is_peft_model(policy) else policy
    backbone = copy.deepcopy(causal_lm.get_decoder())
    return Critic(new_value_head(hidden_size_of(causal_lm)), backbone)


def value_model_critic(source, *, model_dtype: str = "float32", attn_implementation: str | None = "sdpa") -> Critic:
    """A critic from a reward model or causal LM (a path or an object): its backbone, and its
    ``score`` head when it is a one-output causal sequence classifier, else a new head."""
    from posttrain.models.reward import check_reward_head

    model = _load_value_model(source, model_dtype, attn_implementation)
    score = getattr(model, "score", None)
    if isinstance(score, nn.Module) and hasattr(model, "base_model"):
        check_reward_head(model)
        return Critic(score, model.base_model)
    if hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        return Critic(new_value_head(hidden_size_of(model)), model.get_decoder())
    raise ValueError(
        f"value_model is a {type(model).__name__}: the critic needs a causal (decoder-only) backbone, a causal LM or a "
        "causal sequence classifier with a 'score' head (e.g. a reward model trained with posttrain rm on a Llama/Qwen "
        "backbone). Encoders (BERT) see later tokens and cannot value a partial completion"
    )


def _load_value_model(source, model_dtype: str, attn_implementation: str | None) -> nn.Module:
    if not isinstance(source, (str,)) and not hasattr(source, "__fspath__"):
        return source
    from transformers import AutoConfig

    from posttrain.models.loading import load_causal_lm, load_sequence_classifier

    path = str(source)
    architectures = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return load_sequence_classifier(path, model_dtype=model_dtype, attn_implementation=attn_implementation)
    return load_causal_lm(path, model_dtype=model_dtype, attn_implementation=attn_implementation)


def check_same_vocabulary(policy: nn.Module, critic: Critic) -> None:
    """The critic reads the policy's token ids, so both need one vocabulary."""
    if critic.backbone is None:
        return
    ours = critic.backbone.get_input_embeddings().num_embeddings
    theirs = policy.get_input_embeddings().num_embeddings
    if ours != theirs:
        raise ValueError(
            f"value_model has {ours} token embeddings and the policy {theirs}: the critic reads the policy's token ids, "
            "so both must use the same tokenizer. Fix: give a value_model trained from the policy's model family "
            "(e.g. the reward model trained from the SFT model)"
        )


def add_critic_adapter(policy: nn.Module, config) -> Critic:
    """A second LoRA adapter set named ``critic`` on a peft ``policy`` (same rank, alpha and
    targets as the policy's LoRA options) and a new head; every adapter parameter trains."""
    from peft import LoraConfig

    target = config.lora_target_modules
    policy.add_adapter(
        CRITIC_ADAPTER,
        LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=target if isinstance(target, str) else list(target), task_type="CAUSAL_LM",
        ),
    )
    for name, parameter in policy.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(True)
    return Critic(new_value_head(hidden_size_of(policy.get_base_model())))


class _HiddenStatesAsLogits(nn.Module):
    """Presents a base model's last hidden states as ``.logits``, so the packing-isolation
    probe (:func:`~posttrain.models.packing_check.check_packing_isolation`) can test a critic
    backbone: a leak across packed sequences moves hidden states as it moves logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, use_cache=False):
        hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache).last_hidden_state
        return SimpleNamespace(logits=hidden)


def check_critic_packing(critic: Critic, batch_rows: int = 2) -> None:
    """Refuse packing when the critic's own backbone lets packed sequences see each other."""
    from posttrain.models.packing_check import check_packing_isolation

    if critic.backbone is not None:
        probe = _HiddenStatesAsLogits(critic.backbone)
        check_packing_isolation(probe, vocab_size=critic.backbone.get_input_embeddings().num_embeddings, batch_rows=batch_rows)
