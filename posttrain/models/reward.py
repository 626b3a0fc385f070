"""Scalar reward models: where a sequence's reward is read, and scoring completions with one.

**Pooling.** A reward model is any ``AutoModelForSequenceClassification`` with one output.

- *Causal backbones* (Llama, Qwen2, GPT-2, ... : every Hugging Face causal classifier names its
  head ``score``) see a token only after all earlier ones, so the reward is read at each row's
  last real token. Hugging Face finds that token as "the rightmost token that is not the pad
  token", which is wrong whenever the pad token is also EOS (common: Llama tokenizers have no
  pad token, and we set pad = EOS) and the sequence ends with EOS, as our sequences do: it
  then pools at the token *before* EOS, and on a row of all-EOS it pools nowhere sensible.
  :func:`pooled_rewards` instead runs the backbone, takes the hidden state at ``length - 1``
  from the attention mask, and applies the ``score`` head to those rows only (the head is
  linear per position, so this equals scoring every position and gathering).
- *Encoders* (BERT-like; their heads are called ``classifier``) pool through their own forward
  (the first, CLS, token and the pooler), which is correct as long as the attention mask keeps
  the pads out, so the mask is always passed.

:class:`RewardScorer` is what online algorithms (GRPO, PPO) call: it tokenizes
``(prompt, completion)`` exactly as the reward trainer tokenizes each side of a pair
(:func:`posttrain.data.tokenize.tokenize_row`, same EOS rule, same chat template, same
truncation) and pools with the same function.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from posttrain.data import formats
from posttrain.data.chat import require_chat_template
from posttrain.data.collate import collate_padded
from posttrain.data.report import PreparationReport
from posttrain.data.tokenize import LMDataOptions, tokenize_row
from posttrain.errors import ModelError
from posttrain.models.loading import is_peft_model

LAST_TOKEN = "last_token"
MODEL_POOLING = "model"


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``model`` (peft adapters stay injected in it)."""
    return model.get_base_model() if is_peft_model(model) else model


def pooling_of(model: nn.Module) -> str:
    """``"last_token"`` for causal classifiers (a ``score`` head over the backbone's hidden
    states), ``"model"`` for encoders, whose own forward pools (e.g. BERT's CLS pooler)."""
    return LAST_TOKEN if isinstance(getattr(hf_model(model), "score", None), nn.Module) else MODEL_POOLING


def check_reward_head(model: nn.Module) -> None:
    """Refuse classifiers that do not output exactly one number per sequence."""
    labels = getattr(hf_model(model).config, "num_labels", None)
    if labels != 1:
        raise ModelError(
            f"a reward model must have one output (num_labels=1), this one has {labels}. Fix: load it with "
            "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1) (a new head is initialised)"
        )


def pooled_rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One reward per row of a right-padded batch.

    Args:
        model: a sequence classifier with one output (optionally wrapped by peft).
        input_ids: ``(N, T)`` token ids, right padded.
        attention_mask: ``(N, T)`` 1 on real tokens, 0 on pads (right padding: every row is
            ``[1]*length + [0]*(T-length)``, with ``length >= 1``).

    Returns:
        ``(N,)`` float32 rewards; for causal backbones read at each row's token ``length - 1``.
    """
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if bool((lengths < 1).any()) or not torch.equal(attention_mask.bool(), positions < lengths[:, None]):
        raise ValueError("pooled_rewards needs right-padded rows with at least one real token each")
    inner = hf_model(model)
    if pooling_of(model) == MODEL_POOLING:
        logits = inner(input_ids=input_ids, attention_mask=attention_mask).logits
    else:
        hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        logits = inner.score(last)
    if logits.shape[-1] != 1:
        raise ValueError(f"a reward model must have one output per sequence, got {logits.shape[-1]}")
    return logits[:, 0].float()


def padded_batch(examples: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Right-padded ``input_ids`` ``(N, T)`` with their ``attention_mask`` ``(N, T)`` and the
    number of real tokens ``num_tokens``, from tokenized examples (dicts with ``input_ids``,
    ``loss_weights``, ``turn_index``)."""
    batch = collate_padded(examples, pad_token_id, pad_to_multiple_of)
    lengths = torch.tensor([len(example["input_ids"]) for example in examples])
    attention_mask = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
    return {"input_ids": batch["input_ids"], "attention_mask": attention_mask, "num_tokens": batch["num_tokens"]}


class RewardModule(nn.Module):
    """The module the reward trainer optimises: ``forward(input_ids (N, T), attention_mask
    (N, T)) -> rewards (N,)``. Pooling happens inside ``forward`` so that accelerate's DDP/FSDP
    wrapper sees the whole computation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pooled_rewards(self.model, input_ids, attention_mask)


def default_add_eos(model: nn.Module | str) -> bool:
    """Causal backbones read the reward at the last token, so sequences end with EOS as in
    training a policy; encoders pool over everything and need no EOS. ``model`` may be a path:
    the architecture is then built on the meta device (no weights read)."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig, AutoModelForSequenceClassification

        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(os.fspath(model), num_labels=1))
    return pooling_of(model) == LAST_TOKEN


class RewardScorer:
    """Score ``(prompt, completion)`` pairs with a reward model.

    Args:
        model: a sequence classifier with one output (or a peft wrapper of one).
        tokenizer: the tokenizer it was trained with.
        batch_size: sequences per forward.
        max_length: truncate sequences to this many tokens (use the training value).
        add_eos: append EOS to string completions; None picks :func:`default_add_eos`.
        chat_template_kwargs: extra variables for the chat template.

    ``report`` accumulates what tokenization changed (EOS appended, truncations) over calls.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = 1024, add_eos: bool | None = None, chat_template_kwargs: dict | None = None):
        check_reward_head(model)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token)")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # loss_mode "all": the same ids as the trainer's "completion" mode, but a completion
        # truncated away still yields a sequence to score (it is counted in ``report``).
        self.options = LMDataOptions(
            max_length=max_length,
            loss_mode="all",
            add_eos=default_add_eos(model) if add_eos is None else add_eos,
            chat_template_kwargs=dict(chat_template_kwargs or {}),
        )
        self.report = PreparationReport()

    def tokenize(self, prompt, completion, index: int = 0) -> dict:
        """The tokenized example of one pair: ``prompt`` and ``completion`` are strings, or a
        message list and a message list (a string completion of a message-list prompt is taken
        as the assistant's reply)."""
        conversational = isinstance(prompt, list)
        if conversational and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        require_chat_template(self.tokenizer, conversational)
        if _is_empty_reply(completion):
            # A policy that stops at once (EOS first) wrote an empty reply: training data may not
            # have one, but a sampled completion may, and it must be scored like any other.
            return self._empty_reply_example(prompt, completion)
        data_format = formats.DataFormat(formats.PROMPT_COMPLETION, conversational)
        row = {"prompt": prompt, "completion": completion}
        examples, report = tokenize_row(row, index, self.tokenizer, data_format, "all", self.options)
        self.report.add(report)
        if len(examples) != 1:
            raise ValueError(f"pair {index}: tokenized into {len(examples)} sequences, expected one")
        return examples[0]

    def _empty_reply_example(self, prompt, completion) -> dict:
        """The prompt followed by the end of an empty reply: EOS for strings (when ``add_eos``),
        the chat template's rendering of an empty assistant turn for message lists; truncated
        from the left to ``max_length``."""
        if isinstance(prompt, list):
            text = self.tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False, **self.options.chat_template_kwargs)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            ids = ids + ([self.tokenizer.eos_token_id] if self.options.add_eos else [])
        if self.options.max_length:
            ids = ids[-self.options.max_length :]
        return {"input_ids": ids, "loss_weights": [1.0] * len(ids), "turn_index": [-1] * len(ids)}

    @torch.no_grad()
    def score(self, prompts: Sequence, completions: Sequence) -> torch.Tensor:
        """Rewards ``(N,)`` float32 on the CPU for ``N`` prompts and their completions."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        examples = [self.tokenize(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions))]
        # Longest first, so each batch holds similar lengths and little padding.
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
        rewards = torch.empty(len(examples), dtype=torch.float32)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = padded_batch([examples[i] for i in chunk], self.tokenizer.pad_token_id)
                values = pooled_rewards(self.model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                rewards[torch.tensor(chunk)] = values.cpu()
        finally:
            self.model.train(was_training)
        return rewards


def _is_empty_reply(completion) -> bool:
    """An empty string, or a single assistant message with empty content."""
    if isinstance(completion, str):
        return not completion.strip()
    return len(completion) == 1 and isinstance(completion[0], dict) and not str(completion[0].get("content", "")).strip()
