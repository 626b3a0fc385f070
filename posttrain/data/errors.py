"""Errors raised for bad input data: each names the row, the field and the fix."""

from __future__ import annotations

from posttrain.errors import DataError


class DataFormatError(DataError):
    """A dataset row that cannot be used as given.

    The message always reads ``row <index>, field '<field>': <problem>. Fix: <fix>`` so a user
    can find the row in their file and knows what to change.
    """

    def __init__(self, row: int | None, field: str, problem: str, fix: str):
        self.row = row
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"row {row}" if row is not None else "dataset"
        super().__init__(f"{where}, field '{field}': {problem}. Fix: {fix}")


class ChatTemplateError(DataError):
    """The tokenizer's chat template cannot be used for what was asked (missing, or it rewrites
    earlier turns in a way the requested loss mode cannot handle)."""
