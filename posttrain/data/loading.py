"""Rows from wherever the user keeps them: lists of dicts, ``datasets.Dataset``, local
json/jsonl/parquet/csv files, or hub dataset names (through ``datasets.load_dataset``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from posttrain.data.files import FILE_FORMATS, looks_local, read_data_directory, read_data_file
from posttrain.errors import ConfigError, DataFileError


def load_rows(source, option_name: str = "train_data"):
    """A list of dicts or a ``datasets.Dataset`` from ``source``.

    ``source``: a list of dicts or a Dataset (returned as is), a file path (``str`` or any
    ``os.PathLike``), a directory saved with ``Dataset.save_to_disk``, a directory of data files
    (shards; the ``split``'s files when they are named by split), a hub dataset name, or a
    mapping with ``path`` and optional ``name``, ``split`` (default ``train``) and ``data_files``.
    """
    if source is None:
        raise ConfigError(f"no data given: pass a dataset or set {option_name}")
    if isinstance(source, list):
        return source
    if _is_dataset(source):
        return source
    if isinstance(source, (str, os.PathLike)):
        source = {"path": os.fspath(source)}
    if not isinstance(source, Mapping) or "path" not in source:
        raise ConfigError(f"{option_name}: expected a list of rows, a Dataset, a path or {{path, split}}, got {source!r}")
    return _load(dict(source), option_name)


def _is_dataset(source) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(source, datasets.Dataset)


def _load(spec: dict, option_name: str):
    import datasets

    path, split = os.fspath(spec.pop("path")), spec.pop("split", "train")
    local = Path(path).expanduser()
    if local.is_dir() and (local / "dataset_info.json").exists():
        return datasets.load_from_disk(str(local))
    if local.is_dir():
        return read_data_directory(local, split, option_name)
    if local.is_file() or local.suffix.lower() in FILE_FORMATS:
        return read_data_file(local, option_name)
    if looks_local(path):
        raise DataFileError(f"{option_name}: no such file or directory {path}")
    try:
        return datasets.load_dataset(path, split=split, **spec)
    except Exception as error:  # noqa: BLE001 - hub/network/builder errors, re-raised with the name
        raise DataFileError(
            f"{option_name}: could not load dataset {path!r} (no local file or directory of that name, and the hub "
            f"gave: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})"
        ) from error


def split_rows(rows, fraction: float, seed: int):
    """Hold out ``fraction`` of ``rows`` (at least one row) for evaluation, chosen by ``seed``."""
    import random

    count = len(rows)
    held = max(1, round(count * fraction))
    if held >= count:
        raise ConfigError(f"option 'eval_fraction'={fraction} leaves no training rows out of {count}; use a smaller fraction")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    eval_index, train_index = sorted(order[:held]), sorted(order[held:])
    if isinstance(rows, list):
        return [rows[i] for i in train_index], [rows[i] for i in eval_index]
    return rows.select(train_index), rows.select(eval_index)
