"""Prompts to token ids, the way training renders them (for generation: the online trainers, the
completion log and greedy evaluation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from posttrain.data.chat import require_chat_template
from posttrain.errors import DataError

Prompt = str | list[dict]


def is_conversational(prompt) -> bool:
    """True for a message list (``[{"role": ..., "content": ...}, ...]``), False for a string."""
    return isinstance(prompt, list)


def _check_messages(index: int, prompt: list) -> None:
    for turn, message in enumerate(prompt):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(
                f"prompt {index}, message {turn}: expected a dict with 'role' and 'content', got {message!r}. "
                "Fix: give each prompt as a string or as a list of {'role': ..., 'content': ...} messages"
            )
    if not prompt:
        raise ValueError(f"prompt {index}: the message list is empty. Fix: give at least one message")


def encode_prompt(
    tokenizer, prompt: Prompt, chat_template_kwargs: Mapping | None = None, index: int = 0, tools: Sequence | None = None
) -> list[int]:
    """Token ids of one prompt.

    A string gets the tokenizer's special tokens (e.g. Llama's BOS) as in training; a message
    list is rendered by the chat template with the generation prompt (the template adds its own
    special tokens, so none are added on top) and ``tools`` (JSON schemas) when given.
    """
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    elif isinstance(prompt, list):
        _check_messages(index, prompt)
        require_chat_template(tokenizer, conversational=True)
        text = tokenizer.apply_chat_template(
            prompt, tools=tools or None, add_generation_prompt=True, tokenize=False, **dict(chat_template_kwargs or {})
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        raise TypeError(
            f"prompt {index}: expected a string or a list of messages, got {type(prompt).__name__}: {prompt!r:.200}"
        )
    if not ids:
        raise DataError(f"prompt {index} is empty after tokenization ({prompt!r}); generation needs at least one token")
    return ids


def encode_prompts(
    tokenizer, prompts: Sequence[Prompt], chat_template_kwargs: Mapping | None = None, tools: Sequence | None = None
) -> list[list[int]]:
    """:func:`encode_prompt` for each prompt, in order."""
    if isinstance(prompts, (str, Mapping)):
        raise TypeError("prompts must be a list of prompts (strings or message lists), not a single prompt")
    return [encode_prompt(tokenizer, prompt, chat_template_kwargs, index, tools) for index, prompt in enumerate(prompts)]


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token a chat template closes an assistant turn with (ChatML's
    ``<|im_end|>``, Llama 3's ``<|eot_id|>``), as a list of at most one id; empty when the
    tokenizer has no chat template or the template closes turns with plain text.

    Generation of a reply to a message-list prompt must stop there: many templates' end-of-turn
    token is not the tokenizer's EOS, and a completion that runs past it writes the next turn.
    Found by rendering a one-exchange conversation and reading the first special token after the
    reply."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    reply = "pong"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "ping"}, {"role": "assistant", "content": reply}], tokenize=False
    )
    after = text[text.rfind(reply) + len(reply) :]
    special = set(tokenizer.all_special_ids)
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            return [token]
        if tokenizer.decode([token]).strip():
            return []  # text before any special token: the turn ends in plain text
    return []
