"""Rows from wherever the user keeps them: lists of dicts, ``datasets.Dataset``, local
json/jsonl/parquet/csv files, or hub dataset names (through ``datasets.load_dataset``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(source, option_name: str = "train_data"):
    """A list of dicts or a ``datasets.Dataset`` from ``source``.

    ``source``: a list of dicts or a Dataset (returned as is), a file path, a directory saved
    with ``Dataset.save_to_disk``, a hub dataset name, or a mapping with ``path`` and optional
    ``name``, ``split`` (default ``train``) and ``data_files``.
    """
    if source is None:
        raise ValueError(f"no data given: pass a dataset or set {option_name}")
    if isinstance(source, list):
        return source
    if _is_dataset(source):
        return source
    if isinstance(source, (str, Path)):
        source = {"path": str(source)}
    if not isinstance(source, Mapping) or "path" not in source:
        raise ValueError(f"{option_name}: expected a list of rows, a Dataset, a path or {{path, split}}, got {source!r}")
    return _load(dict(source), option_name)


def _is_dataset(source) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(source, datasets.Dataset)


def _load(spec: dict, option_name: str):
    import datasets

    path, split = spec.pop("path"), spec.pop("split", "train")
    local = Path(path)
    if local.is_dir() and (local / "dataset_info.json").exists():
        return datasets.load_from_disk(str(local))
    builder = _FILE_BUILDERS.get(local.suffix.lower())
    if builder is not None:
        if not local.is_file():
            raise FileNotFoundError(f"{option_name}: no such file {path}")
        return datasets.load_dataset(builder, data_files=str(local), split="train")
    return datasets.load_dataset(path, split=split, **spec)


def split_rows(rows, fraction: float, seed: int):
    """Hold out ``fraction`` of ``rows`` (at least one row) for evaluation, chosen by ``seed``."""
    import random

    count = len(rows)
    held = max(1, round(count * fraction))
    if held >= count:
        raise ValueError(f"eval_fraction={fraction} leaves no training rows out of {count}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    eval_index, train_index = sorted(order[:held]), sorted(order[held:])
    if isinstance(rows, list):
        return [rows[i] for i in train_index], [rows[i] for i in eval_index]
    return rows.select(train_index), rows.select(eval_index)
