"""Preference pairs (reward models, DPO) and unpaired labelled rows (KTO) as token ids.

Each completion is tokenized exactly like an SFT prompt-completion row
(:func:`posttrain.data.tokenize.tokenize_row` in ``completion`` mode): the same EOS rule, the same
prompt/completion boundary, the same chat-template spans, truncation and counting. So a
``(prompt, chosen)`` sequence here has the same tokens and loss weights as the SFT example of
that row, and what a DPO run trains on can be inspected with the same tools.

Rows without a ``prompt`` column carry it implicitly: the longest common prefix of ``chosen``
and ``rejected`` (whole messages for conversations; for strings, characters backed off to a word
boundary, with the whitespace handed to the completions because tokenizers attach a space to
the next word). Without a prompt column the split is a guess: two answers that open with the
same words get those words counted as prompt. Give a ``prompt`` column when you have one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from posttrain.data import formats
from posttrain.data.errors import DataFormatError
from posttrain.data.example import TokenizedExample
from posttrain.data.prepare import clean_row, column_names
from posttrain.data.report import PreparationReport
from posttrain.data.tokenize import LMDataOptions, tokenize_row
from posttrain.errors import DataError


@dataclass
class PreparedPreferences:
    """Tokenized rows and what happened to them.

    ``items`` are dicts; for pairs ``{"chosen", "rejected": TokenizedExample, "margin": float |
    None, "row": int}``; for unpaired rows ``{"example": TokenizedExample, "label": bool,
    "row": int}``. ``dropped_pairs`` counts rows lost because a side had no completion token
    left after truncation (the per-side counts are in ``report``).
    """

    items: list[dict]
    report: PreparationReport
    data_format: formats.DataFormat
    dropped_pairs: int = 0

    def lines(self) -> list[str]:
        lines = self.report.lines()
        if self.dropped_pairs:
            lines.insert(0, f"dropped {self.dropped_pairs} row(s) whose completion had no token left after truncation")
        return lines


def split_implicit_prompt(chosen, rejected, row: int):
    """``(prompt, chosen_completion, rejected_completion)`` from two full sequences that share a
    prompt. Raises naming the row when nothing is shared or one side is entirely prompt."""
    if isinstance(chosen, str):
        shared = 0
        for a, b in zip(chosen, rejected):
            if a != b:
                break
            shared += 1
        prompt = chosen[:shared]
        # Never split a word: "What is 7+7? 14" vs "... 15" share "... 1", but the prompt is the
        # question. Back off to the last whitespace (kept with the completions) when there is one.
        if not prompt[-1:].isspace():
            cut = max((i for i, ch in enumerate(prompt) if ch.isspace()), default=-1)
            prompt = prompt[:cut] if cut > 0 else prompt
        shared = len(prompt.rstrip())
    else:
        shared = 0
        for a, b in zip(chosen, rejected):
            if a != b:
                break
            shared += 1
    if shared == 0 or shared >= min(len(chosen), len(rejected)):
        raise DataFormatError(
            row,
            "chosen",
            "there is no 'prompt' column and chosen and rejected do not share a prompt followed by differing completions",
            "add a 'prompt' column, or make chosen and rejected full sequences that start with the same prompt",
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _tokenize_completion(prompt, completion, row: int, tokenizer, conversational: bool, options: LMDataOptions, report: PreparationReport):
    """One TokenizedExample for prompt + completion (completion tokens weighted 1), or None
    when truncation left no completion token."""
    data_format = formats.DataFormat(formats.PROMPT_COMPLETION, conversational)
    examples, side = tokenize_row({"prompt": prompt, "completion": completion}, row, tokenizer, data_format, "completion", options)
    side.rows = 0  # rows are counted once per input row, not per side
    report.add(side)
    if len(examples) > 1:  # only possible for a chat template that rewrites earlier turns
        raise DataFormatError(
            row, "completion", "the chat template renders this completion as several examples", "use a single assistant turn per completion"
        )
    return examples[0] if examples else None


def _rows_of(rows) -> tuple[list[Mapping], formats.DataFormat]:
    if len(rows) == 0:
        raise DataFormatError(None, "<rows>", "the dataset is empty", "pass at least one row")
    data_format = formats.detect_format(column_names(rows), rows[0])
    return rows, data_format


def prepare_preference_pairs(rows, tokenizer, options: LMDataOptions) -> PreparedPreferences:
    """Tokenize preference rows (``chosen``, ``rejected``, optional ``prompt`` and ``margin``)."""
    rows, data_format = _rows_of(rows)
    if data_format.name != formats.PREFERENCE:
        raise DataFormatError(None, ", ".join(column_names(rows)), f"expected preference rows, found {data_format}", "give rows with 'chosen' and 'rejected' (and optionally 'prompt')")
    options = replace(options, loss_mode="completion")
    report, items, dropped = PreparationReport(), [], 0
    for index in range(len(rows)):
        row = clean_row(dict(rows[index]))
        formats.validate_row(row, index, data_format)
        report.rows += 1
        if row.get("prompt") is None:
            prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"], index)
        else:
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        sides = [_tokenize_completion(prompt, c, index, tokenizer, data_format.conversational, options, report) for c in (chosen, rejected)]
        if None in sides:
            dropped += 1
            continue
        margin = row.get("margin")
        items.append({"chosen": sides[0], "rejected": sides[1], "margin": None if margin is None else float(margin), "row": index})
    if not items:
        raise DataError("no preference pair has completion tokens left to train on; " + "; ".join(report.lines()))
    return PreparedPreferences(items, report, data_format, dropped)


def pairs_to_unpaired(rows: Sequence[Mapping]) -> list[dict]:
    """Preference rows -> KTO rows: each pair gives a desirable (chosen) and an undesirable
    (rejected) row with the same prompt (implicit prompts are split first)."""
    out = []
    for index, row in enumerate(rows):
        if row.get("prompt") is None:
            prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"], index)
        else:
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        out.append({"prompt": prompt, "completion": chosen, "label": True})
        out.append({"prompt": prompt, "completion": rejected, "label": False})
    return out


def prepare_unpaired(rows, tokenizer, options: LMDataOptions) -> PreparedPreferences:
    """Tokenize KTO rows (``prompt``, ``completion``, ``label``); preference rows are converted
    with :func:`pairs_to_unpaired` first."""
    rows, data_format = _rows_of(rows)
    source_row = list(range(len(rows)))  # index of the input row behind each row below
    if data_format.name == formats.PREFERENCE:
        for index in range(len(rows)):
            formats.validate_row(clean_row(dict(rows[index])), index, data_format)
        source_row = [index for index in range(len(rows)) for _ in ("chosen", "rejected")]
        rows = pairs_to_unpaired([clean_row(dict(rows[i])) for i in range(len(rows))])
        data_format = formats.DataFormat(formats.UNPAIRED, data_format.conversational)
    if data_format.name != formats.UNPAIRED:
        raise DataFormatError(None, ", ".join(column_names(rows)), f"expected unpaired rows, found {data_format}", "give rows with 'prompt', 'completion' and a boolean 'label' (or preference pairs)")
    options = replace(options, loss_mode="completion")
    report, items, dropped = PreparationReport(), [], 0
    for index in range(len(rows)):
        row, source = clean_row(dict(rows[index])), source_row[index]
        formats.validate_row(row, source, data_format)
        report.rows += 1
        example = _tokenize_completion(row["prompt"], row["completion"], source, tokenizer, data_format.conversational, options, report)
        if example is None:
            dropped += 1
            continue
        items.append({"example": example, "label": bool(row["label"]), "row": source})
    if not items:
        raise DataError("no row has completion tokens left to train on; " + "; ".join(report.lines()))
    return PreparedPreferences(items, report, data_format, dropped)


def completion_start(example: TokenizedExample) -> int:
    """Index of the first completion token (the first token with a loss weight)."""
    for position, weight in enumerate(example["loss_weights"]):
        if weight:
            return position
    return len(example["input_ids"])
