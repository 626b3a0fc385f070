"""Whole-dataset preparation for language modelling (SFT): detect the format, validate, tokenize
every row with ``datasets.map``, drop what cannot be trained on, and count all of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from posttrain.data import formats
from posttrain.data.errors import DataFormatError
from posttrain.data.report import PreparationReport
from posttrain.data.tokenize import LMDataOptions, resolve_loss_mode, tokenize_row
from posttrain.errors import DataError

_STATS = [f.name for f in fields(PreparationReport)]
_KEEP = "_keep"


@dataclass
class PreparedLMData:
    """Tokenized examples (a ``datasets.Dataset`` with ``input_ids``, ``loss_weights``,
    ``turn_index``, ``row`` and ``length`` columns) and how they were made."""

    examples: object
    report: PreparationReport
    data_format: formats.DataFormat
    loss_mode: str

    @property
    def lengths(self) -> list[int]:
        return list(self.examples["length"])


def _features():
    from datasets import Features, Sequence, Value

    columns = {
        "input_ids": Sequence(Value("int32")),
        "loss_weights": Sequence(Value("float32")),
        "turn_index": Sequence(Value("int32")),
        "row": Value("int64"),
        "length": Value("int32"),
        _KEEP: Value("bool"),
    }
    columns.update({f"_stat_{name}": Value("int64") for name in _STATS})
    return Features(columns)


def first_row(rows) -> Mapping:
    return rows[0]


def column_names(rows) -> list[str]:
    """The columns of ``rows``; a Python row that is not a mapping is refused by its index."""
    if isinstance(rows, list):
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise DataFormatError(
                    index, "<row>", f"expected a mapping of column: value (a JSON object), got {type(row).__name__}", "make each row a dict"
                )
        return sorted({key for row in rows for key in row})
    return list(rows.column_names)


def used_columns(rows: list[Mapping], data_format: formats.DataFormat) -> list[dict]:
    """Python rows cut to the columns the format reads (plus ``tools``), cleaned: a column we
    never read must not fail the Arrow conversion with mixed types."""
    keep = set(formats.FORMAT_COLUMNS[data_format.name]) | {"prompt", "tools"}
    return [clean_row({key: value for key, value in row.items() if key in keep}) for row in rows]


def prepare_lm_data(rows, tokenizer, options: LMDataOptions, *, num_proc: int | None = None, desc: str = "tokenizing") -> PreparedLMData:
    """Tokenize ``rows`` (a list of dicts or a ``datasets.Dataset``) for language modelling."""
    import datasets

    if len(rows) == 0:
        raise DataFormatError(None, "<rows>", "the dataset is empty", "pass at least one row")
    data_format = formats.detect_format(column_names(rows), first_row(rows))
    loss_mode = resolve_loss_mode(options.loss_mode, data_format)
    if isinstance(rows, list):
        # Check python rows before Arrow sees them: Arrow would fail on mixed types with a
        # message that names neither the row nor the fix.
        formats.validate_rows(rows, data_format, require_assistant=loss_mode in ("assistant", "last_assistant"))
        rows = datasets.Dataset.from_list(used_columns(rows, data_format))

    def tokenize_batch(batch: dict, indices: list[int]) -> dict:
        out = {name: [] for name in _features()}
        for position, index in enumerate(indices):
            row = clean_row({key: values[position] for key, values in batch.items()})
            examples, report = tokenize_row(row, index, tokenizer, data_format, loss_mode, options)
            stats = report.as_dict()
            placeholders = examples or [{"input_ids": [], "loss_weights": [], "turn_index": [], "row": index}]
            for number, example in enumerate(placeholders):
                for key in ("input_ids", "loss_weights", "turn_index", "row"):
                    out[key].append(example[key])
                out["length"].append(len(example["input_ids"]))
                out[_KEEP].append(bool(examples))
                for name in _STATS:
                    out[f"_stat_{name}"].append(stats[name] if number == 0 else 0)
        return out

    mapped = rows.map(
        tokenize_batch,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        features=_features(),
        num_proc=num_proc,
        desc=desc,
    )
    report = PreparationReport(**{name: int(sum(mapped[f"_stat_{name}"])) for name in _STATS})
    kept = mapped.filter(lambda keep: keep, input_columns=_KEEP, num_proc=num_proc)
    kept = kept.remove_columns([_KEEP] + [f"_stat_{name}" for name in _STATS])
    if len(kept) == 0:
        raise DataError("no row has any token left to train on; " + "; ".join(report.lines()))
    return PreparedLMData(kept, report, data_format, loss_mode)


def clean_row(row: dict) -> dict:
    """Undo Arrow's schema unification: in a ``datasets.Dataset`` every message carries every
    key seen in any message (``tool_calls: None`` on a plain user turn). Chat templates test
    ``is defined``, so those ``None`` keys would change the rendering; drop them. Content given
    as text parts becomes one string (:func:`~posttrain.data.formats.content_text`)."""
    for field in ("messages", "prompt", "completion", "chosen", "rejected"):
        value = row.get(field)
        if isinstance(value, list):
            row[field] = [_clean_message(message) if isinstance(message, Mapping) else message for message in value]
    return row


def _clean_message(message: Mapping) -> dict:
    cleaned = {k: v for k, v in message.items() if v is not None}
    if "content" in cleaned:
        cleaned["content"] = formats.content_text(cleaned["content"])
    return cleaned
