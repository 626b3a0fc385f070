"""Detect which of the supported row formats a dataset uses, and validate every row.

Formats (docs/design.md, "Data"); "conversational" means the fields hold message lists rather than
strings:

=====================  ===================================================  =================
format                 columns                                              used by
=====================  ===================================================  =================
``text``               ``text``                                             SFT
``messages``           ``messages``                                         SFT
``prompt_completion``  ``prompt``, ``completion``                           SFT
``prompt_only``        ``prompt`` (+ any extra columns)                     GRPO, PPO
``preference``         ``chosen``, ``rejected`` (+ optional ``prompt``)     RM, DPO
``unpaired``           ``prompt``, ``completion``, ``label`` (bool)         KTO
=====================  ===================================================  =================

Every check raises :class:`~posttrain.data.errors.DataFormatError` naming the row, the field
and the fix. Validation runs over all rows before any tokenization, so a bad row 90,000 fails
in seconds rather than after an hour of preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

from posttrain.data.errors import DataFormatError

TEXT = "text"
MESSAGES = "messages"
PROMPT_COMPLETION = "prompt_completion"
PROMPT_ONLY = "prompt_only"
PREFERENCE = "preference"
UNPAIRED = "unpaired"

KNOWN_ROLES = ("system", "developer", "user", "assistant", "tool")

# Checked in this order: the first format whose columns are all present wins.
_FORMAT_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (PREFERENCE, ("chosen", "rejected")),
    (UNPAIRED, ("prompt", "completion", "label")),
    (PROMPT_COMPLETION, ("prompt", "completion")),
    (MESSAGES, ("messages",)),
    (TEXT, ("text",)),
    (PROMPT_ONLY, ("prompt",)),
)


FORMAT_COLUMNS = dict(_FORMAT_COLUMNS)


@dataclass(frozen=True)
class DataFormat:
    """A detected format: its name and whether its fields are message lists."""

    name: str
    conversational: bool

    def __str__(self) -> str:
        kind = "conversational" if self.conversational else "standard"
        return f"{self.name} ({kind})"


def detect_format(columns: Iterable[str], first_row: Mapping | None = None) -> DataFormat:
    """Pick the format from a dataset's column names (and the first row, for conversational-ness).

    Raises DataFormatError listing the accepted column sets when nothing matches.
    """
    present = set(columns)
    for name, needed in _FORMAT_COLUMNS:
        if all(column in present for column in needed):
            conversational = name == MESSAGES
            if first_row is not None and name != MESSAGES:
                probe = "chosen" if name == PREFERENCE else "prompt"
                conversational = isinstance(first_row.get(probe), list)
            return DataFormat(name, conversational)
    accepted = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in _FORMAT_COLUMNS)
    raise DataFormatError(
        None,
        ", ".join(sorted(present)) or "<no columns>",
        "these columns match no supported format",
        f"rename the columns to one of these sets ({accepted})",
    )


def validate_rows(
    rows: Iterable[Mapping], data_format: DataFormat, *, require_assistant: bool = False
) -> int:
    """Check every row against ``data_format``; return the number of rows.

    ``require_assistant``: conversations must contain an assistant turn (asked for by the loss
    modes that train on assistant turns).
    """
    count = 0
    for index, row in enumerate(rows):
        validate_row(row, index, data_format, require_assistant=require_assistant)
        count += 1
    if count == 0:
        raise DataFormatError(None, "<rows>", "the dataset is empty", "pass at least one row")
    return count


def validate_row(row: Mapping, index: int, data_format: DataFormat, *, require_assistant: bool = False) -> None:
    """Check one row (``index`` is its position in the dataset, used in the error message)."""
    _VALIDATORS[data_format.name](row, index, data_format.conversational, require_assistant)


# ----------------------------------------------------------------------------- field checks


def _require(row: Mapping, index: int, field: str):
    if not isinstance(row, Mapping):
        raise DataFormatError(
            index, "<row>", f"expected a dict, got {type(row).__name__}", "make each row a JSON object"
        )
    value = row.get(field)
    if value is None:
        raise DataFormatError(
            index, field, "missing", f"add a '{field}' value to the row or drop the row"
        )
    return value


def _check_string(value, index: int, field: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise DataFormatError(
            index,
            field,
            f"expected a string, got {type(value).__name__}",
            "store the text as a string (or make every row of this column a message list)",
        )
    if not allow_empty and not value.strip():
        raise DataFormatError(index, field, "empty text", "remove the row or fill in the text")
    check_encodable(value, index, field)


def check_encodable(text: str, index: int, field: str) -> None:
    """Refuse text that is not valid Unicode (a lone UTF-16 surrogate such as ``\\ud800``, left by
    a broken JSON escape or a mis-decoded file): no tokenizer or Arrow table can store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataFormatError(
            index,
            field,
            f"invalid character {text[error.start]!r} at position {error.start} (a lone surrogate: the text is not valid Unicode)",
            "repair the text's encoding (e.g. decode the source file as UTF-8, or replace the character)",
        ) from None


def content_text(content):
    """Message content as one string: a string as is; a list of ``{"type": "text", "text": ...}``
    parts joined without a separator (as chat templates that take parts render them). Anything
    else is returned unchanged for :func:`check_messages` to refuse by row."""
    if isinstance(content, list) and all(isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    return content


def _check_content_parts(parts: list, index: int, where: str) -> None:
    for position, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"a {kind!r} part" if kind else f"a part that is not {{'type': 'text', 'text': ...}} ({part!r:.60})"
            raise DataFormatError(
                index,
                f"{where}.content[{position}]",
                f"{what}; only text is trained on",
                'give the content as a string or as text parts [{"type": "text", "text": "..."}], or drop the row',
            )


def check_messages(
    value, index: int, field: str, *, require_assistant: bool = False, allow_empty: bool = False
) -> None:
    """Validate a list of ``{"role", "content"}`` messages."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise DataFormatError(
            index,
            field,
            f"expected a list of messages, got {type(value).__name__}",
            'use [{"role": "user", "content": "..."}, ...]',
        )
    if not value and not allow_empty:
        raise DataFormatError(index, field, "no messages", "remove the row or add its messages")
    for position, message in enumerate(value):
        where = f"{field}[{position}]"
        if not isinstance(message, Mapping):
            raise DataFormatError(
                index, where, f"expected a dict, got {type(message).__name__}", 'use {"role": ..., "content": ...}'
            )
        role = message.get("role")
        if role not in KNOWN_ROLES:
            raise DataFormatError(
                index,
                f"{where}.role",
                f"unknown role {role!r}" if role is not None else "missing role",
                f"use one of {', '.join(KNOWN_ROLES)}",
            )
        _check_content(message, index, where)
    if require_assistant and not any(m.get("role") == "assistant" for m in value):
        raise DataFormatError(
            index,
            field,
            "no assistant turn, but the loss mode trains on assistant turns",
            "add an assistant reply, drop the row, or use loss_mode='all'",
        )


def _check_content(message: Mapping, index: int, where: str) -> None:
    content = message.get("content")
    if content is None and not message.get("tool_calls"):
        raise DataFormatError(index, f"{where}.content", "missing", "give every message a 'content' string")
    if isinstance(content, list):
        _check_content_parts(content, index, where)
        content = content_text(content)
    if content is not None and not isinstance(content, str):
        raise DataFormatError(
            index,
            f"{where}.content",
            f"expected a string, got {type(content).__name__}",
            "store message content as a string (or a list of text parts)",
        )
    if content is not None:
        check_encodable(content, index, f"{where}.content")
    if message.get("role") == "assistant" and not message.get("tool_calls") and not (content or "").strip():
        raise DataFormatError(
            index,
            f"{where}.content",
            "an assistant turn with empty content: the model would be trained to answer with nothing",
            "fill in the reply, or drop the turn or the row",
        )


def _check_text_or_messages(value, index, field, conversational, *, require_assistant=False, allow_empty=False):
    if conversational:
        check_messages(value, index, field, require_assistant=require_assistant, allow_empty=allow_empty)
    else:
        _check_string(value, index, field, allow_empty=allow_empty)


def _validate_text(row, index, conversational, require_assistant):
    _check_string(_require(row, index, "text"), index, "text")


def _validate_messages(row, index, conversational, require_assistant):
    check_messages(_require(row, index, "messages"), index, "messages", require_assistant=require_assistant)


def _validate_prompt_completion(row, index, conversational, require_assistant):
    prompt = _require(row, index, "prompt")
    completion = _require(row, index, "completion")
    _check_text_or_messages(prompt, index, "prompt", conversational, allow_empty=not conversational)
    _check_text_or_messages(completion, index, "completion", conversational, require_assistant=conversational)


def _validate_prompt_only(row, index, conversational, require_assistant):
    _check_text_or_messages(_require(row, index, "prompt"), index, "prompt", conversational)


def _validate_preference(row, index, conversational, require_assistant):
    chosen = _require(row, index, "chosen")
    rejected = _require(row, index, "rejected")
    prompt = row.get("prompt")
    if isinstance(prompt, str) and conversational and _starts_with_user_turn(chosen, prompt):
        # The shape of e.g. HuggingFaceH4/ultrafeedback_binarized: a prompt column that repeats
        # the first user turn of full conversations.
        raise DataFormatError(
            index,
            "prompt",
            "a string, while 'chosen' and 'rejected' are whole conversations that already start with it",
            "drop the 'prompt' column: the messages chosen and rejected share become the prompt",
        )
    if prompt is not None:
        _check_text_or_messages(prompt, index, "prompt", conversational, allow_empty=not conversational)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        _check_text_or_messages(value, index, field, conversational, require_assistant=conversational)
    if chosen == rejected:
        raise DataFormatError(
            index,
            "rejected",
            "identical to 'chosen', so the pair carries no preference",
            "fix or drop the row",
        )
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, Real)):
        raise DataFormatError(
            index, "margin", f"expected a number, got {type(margin).__name__}", "store the margin as a float"
        )
    if margin is not None and not math.isfinite(margin):
        raise DataFormatError(index, "margin", f"{margin} is not a finite number", "give a finite margin, or leave it empty for no margin")


def _starts_with_user_turn(messages, text: str) -> bool:
    first_user = next((m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"), None) if isinstance(messages, list) else None
    return first_user is not None and first_user.get("content") == text


def _validate_unpaired(row, index, conversational, require_assistant):
    _validate_prompt_completion(row, index, conversational, require_assistant)
    label = _require(row, index, "label")
    if not _is_bool(label):
        raise DataFormatError(
            index,
            "label",
            f"expected true/false, got {label!r} ({type(label).__name__})",
            "store the label as a boolean: true for a desirable completion, false for an undesirable one",
        )


def _is_bool(value) -> bool:
    # numpy's bool (from pandas/parquet) is not a subclass of bool but is a real boolean.
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"))


_VALIDATORS = {
    TEXT: _validate_text,
    MESSAGES: _validate_messages,
    PROMPT_COMPLETION: _validate_prompt_completion,
    PROMPT_ONLY: _validate_prompt_only,
    PREFERENCE: _validate_preference,
    UNPAIRED: _validate_unpaired,
}
