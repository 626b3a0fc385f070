"""Renaming dataset columns to the names a format expects (``question`` -> ``prompt``), so a
hub dataset can be trained on as it is published, from a config alone."""

from __future__ import annotations

from collections.abc import Mapping

from posttrain.data.errors import DataFormatError


def rename_columns(rows, mapping: Mapping[str, str] | None, option_name: str = "rename_columns"):
    """``rows`` (a list of dicts or a ``datasets.Dataset``) with each column ``old`` renamed to
    ``mapping[old]``. A column named in ``mapping`` but missing from a row, or a new name that
    already exists, is an error naming the row and the option."""
    if not mapping:
        return rows
    if not isinstance(rows, list):
        present = set(rows.column_names)
        _check_names(mapping, present, None, option_name)
        return rows.rename_columns(dict(mapping))
    renamed = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            return rows  # the format check names such a row
        _check_names(mapping, set(row), index, option_name)
        renamed.append({mapping.get(key, key): value for key, value in row.items()})
    return renamed


def _check_names(mapping: Mapping[str, str], present: set, index: int | None, option_name: str) -> None:
    for old, new in mapping.items():
        if old not in present:
            raise DataFormatError(index, old, f"column to rename is missing (columns: {', '.join(sorted(present))})", f"fix {option_name} or the data")
        if new in present and new not in mapping:
            raise DataFormatError(index, new, f"{option_name} renames '{old}' to '{new}', which already exists", "drop one of the two columns")
