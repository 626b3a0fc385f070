"""Which tokens of a rendered conversation belong to which message, for any chat template.

No ``{% generation %}`` markers are needed. The conversation is rendered once in full and
tokenized once with character offsets; each message whose span we need is located by rendering
the conversation *up to* that message:

- its span starts where ``render(messages[:k], add_generation_prompt=True)`` ends for an
  assistant message (the ``<|im_start|>assistant\\n`` header is prompt, not something the model
  must produce), and where ``render(messages[:k])`` ends for any other message;
- it ends where ``render(messages[:k + 1])`` ends, minus trailing whitespace. So the template's
  end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``...) is inside the span, and the
  newline a template puts between turns is not: a model stops at the end-of-turn token and never
  generates that newline.

A token belongs to a span when its characters overlap the span. A token that straddles a span's
start (the template's text merged with the first characters of the reply) is therefore trained
on, and counted in ``boundary_mismatches``.

This only works when every partial rendering is a prefix of the full one. Templates that rewrite
earlier turns (Qwen3 drops ``<think>`` blocks from assistant turns before the last user message)
are not prefix-preserving; :class:`NotPrefixPreservingError` is raised and the caller decides what
to do (``posttrain.data.tokenize`` renders each trained turn as its own example: exactly the text
the model sees when it produces that turn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from posttrain.data.errors import ChatTemplateError, DataFormatError
from posttrain.errors import DataError


class NotPrefixPreservingError(ChatTemplateError):
    """Rendering the conversation up to a message is not a prefix of rendering all of it."""


class TemplateRejectedError(DataError):
    """The chat template raised on this conversation (e.g. a strict template given two user
    turns in a row); :func:`tokenize_conversation` names the row."""


@dataclass(frozen=True)
class ConversationTokens:
    """One rendered, tokenized conversation.

    Attributes:
        input_ids: token ids of the full rendering.
        message_index: one entry per token: the index (into ``messages``) of the requested span
            message the token belongs to, or -1.
        boundary_mismatches: how many span boundaries fall inside a token.
        text: the full rendered text.
    """

    input_ids: list[int]
    message_index: list[int]
    boundary_mismatches: int
    text: str


def render(tokenizer, messages: Sequence[Mapping], *, add_generation_prompt: bool = False, tools=None, **kwargs) -> str:
    """The chat template applied to ``messages`` as text; refuses clearly when there is none."""
    if not messages:
        return ""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "conversational data needs a chat template, and this tokenizer has none. Fix: set "
            "chat_template in the config (a Jinja string or a file path), or use a tokenizer that has one"
        )
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages), tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
        )
    except TemplateError as error:
        raise TemplateRejectedError(f"the chat template refused this conversation ({type(error).__name__}: {error})") from error


def _require_prefix(partial: str, full: str, message: int, row: int | None) -> None:
    if not full.startswith(partial):
        where = f"row {row}: " if row is not None else ""
        raise NotPrefixPreservingError(
            f"{where}the chat template is not prefix-preserving: rendering the conversation up to "
            f"message {message} is not a prefix of rendering all of it (the template rewrites "
            "earlier turns), so token spans cannot be read off one rendering"
        )


def message_span(
    tokenizer, messages: Sequence[Mapping], index: int, full_text: str, *, row: int | None = None, tools=None, **kwargs
) -> tuple[int, int]:
    """Character span ``[start, end)`` of ``messages[index]`` inside ``full_text``."""
    is_assistant = messages[index].get("role") == "assistant"
    before = messages[:index]
    try:
        head = render(tokenizer, before, add_generation_prompt=is_assistant, tools=tools, **kwargs)
    except ChatTemplateError:
        raise
    except Exception:  # noqa: BLE001 - some templates cannot render every prefix (e.g. an empty one)
        head = render(tokenizer, before, tools=tools, **kwargs) if before else ""
    _require_prefix(head, full_text, index, row)
    through = full_text if index == len(messages) - 1 else render(tokenizer, messages[: index + 1], tools=tools, **kwargs)
    _require_prefix(through, full_text, index, row)
    end = len(through.rstrip())
    return len(head), max(end, len(head))


def tokenize_conversation(
    tokenizer,
    messages: Sequence[Mapping],
    *,
    span_messages: Sequence[int] = (),
    row: int | None = None,
    chat_template_kwargs: Mapping | None = None,
    tools=None,
    field: str = "messages",
) -> ConversationTokens:
    """Render ``messages`` with the chat template, tokenize, and locate ``span_messages``.

    Tokens are made with ``add_special_tokens=False``: the template writes its own BOS, as
    ``apply_chat_template(tokenize=True)`` assumes. Raises :class:`NotPrefixPreservingError` when
    a span cannot be located in the single full rendering, and a :class:`DataFormatError` naming
    ``row`` and ``field`` when the template refuses the conversation.
    """
    kwargs = dict(chat_template_kwargs or {})
    try:
        full_text = render(tokenizer, messages, tools=tools, **kwargs)
        spans = [(m, *message_span(tokenizer, messages, m, full_text, row=row, tools=tools, **kwargs)) for m in span_messages]
    except TemplateRejectedError as error:
        raise DataFormatError(
            row, field, str(error), "change the conversation to one this template accepts (e.g. user and assistant turns alternating), or set chat_template"
        ) from None
    encoding = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    message_index = [-1] * len(input_ids)
    mismatches = 0
    for message, start, end in spans:
        for position, (token_start, token_end) in enumerate(offsets):
            if token_end > start and token_start < end:
                message_index[position] = message
                if token_start < start:
                    mismatches += 1
    return ConversationTokens(input_ids, message_index, mismatches, full_text)


def require_chat_template(tokenizer, conversational: bool) -> None:
    """Conversational rows need a chat template; encoder tokenizers (BERT) usually have none."""
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "these rows are conversational (message lists), which are rendered with the tokenizer's chat template, "
            "and this tokenizer has none (typical of encoder backbones such as BERT). Fix: give the rows as plain "
            "strings (prompt/chosen/rejected text), or set chat_template (a Jinja string or a file path) in the config"
        )
