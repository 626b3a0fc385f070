"""Reading local data files (.jsonl, .json, .parquet, .csv) with errors a user can act on.

``datasets.load_dataset`` reads the file (fast, memory-mapped, cached). When it fails, the file
is examined here to say what is wrong in the user's terms: the file, the line, and the format
that was expected, instead of an Arrow parser message. A JSON file that is valid JSON but that
Arrow cannot type (a lone surrogate in a string, columns of mixed types) is read with Python's
``json`` instead, so the row checks of :mod:`posttrain.data.formats` can name the row and field.
So is a JSON file that datasets could only read by giving a column its ``Json`` type: that type
decodes a string that looks like JSON, so the reply ``"2"`` would come back as the number 2.
Text files must be UTF-8; a file that is not is refused with the line of the first bad byte.

CSV has no types: the text columns (``prompt``, ``completion``, ``chosen``, ``rejected``,
``text``) are read as text, so a completion ``113`` stays the string "113", and only an empty
cell is missing (``NA`` or ``null`` are text too).
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

from posttrain.errors import DataFileError

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_COLUMNS = ("prompt", "completion", "chosen", "rejected", "text")
_EXAMPLE_ROW = '{"prompt": "...", "completion": "..."}'


def read_data_file(path: Path, option_name: str = "train_data"):
    """Rows of a local data file: a ``datasets.Dataset``, or a list of dicts when only Python's
    json could read it. Raises :class:`DataFileError` naming the file, the line and the format."""
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataFileError(
            f"{option_name}: {path} has the unsupported file type {suffix or '(none)'!r}; use .jsonl (one JSON object per "
            "line), .json, .parquet or .csv, or a directory saved with Dataset.save_to_disk"
        )
    if not path.is_file():
        raise DataFileError(f"{option_name}: no such file {path}")
    if _is_blank(path):
        raise DataFileError(f"{option_name}: {path} is empty; expected {_expected(suffix)}")
    if FILE_FORMATS[suffix] != "parquet":
        _check_utf8(path)
    reader = {"json": _read_json, "parquet": _read_parquet, "csv": _read_csv}[FILE_FORMATS[suffix]]
    rows = reader(path)
    if len(rows) == 0:
        raise DataFileError(f"{option_name}: {path} holds no rows; expected {_expected(suffix)}")
    return rows


def read_data_directory(path: Path, split: str, option_name: str = "train_data"):
    """Rows of a directory of data files (shards such as ``part-0000.jsonl``): the files of
    ``split`` as datasets names them (``train-*``, ``test.jsonl``; every file when none is named
    by split), each read and checked as :func:`read_data_file` does, joined in name order."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files_by_split = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except Exception:  # noqa: BLE001 - datasets raises when the directory holds no data file at all
        files_by_split = {}
    splits = {str(name): [Path(f) for f in files if Path(f).suffix.lower() in FILE_FORMATS] for name, files in files_by_split.items()}
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise DataFileError(
            f"{option_name}: the directory {path} holds no .jsonl, .json, .parquet or .csv file (nor a dataset written "
            "with Dataset.save_to_disk)"
        )
    if split not in splits:
        raise DataFileError(f"{option_name}: the directory {path} has no {split!r} files; its files are named for {', '.join(sorted(splits))}. Give split: <one of those>")
    files = sorted(splits[split])
    kinds = sorted({FILE_FORMATS[f.suffix.lower()] for f in files})
    if len(kinds) > 1:
        raise DataFileError(f"{option_name}: the directory {path} mixes {' and '.join(kinds)} files; keep one format per dataset directory")
    parts = [read_data_file(f, option_name) for f in files]
    if all(not isinstance(part, list) for part in parts):
        import datasets

        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return [row for part in parts for row in (part if isinstance(part, list) else part.to_list())]


def _expected(suffix: str) -> str:
    return {
        ".jsonl": f"JSON Lines: one JSON object per line, e.g. {_EXAMPLE_ROW}",
        ".json": f"a JSON array of objects, e.g. [{_EXAMPLE_ROW}], or one object per line",
        ".parquet": "a Parquet table with one row per example",
        ".csv": "a header line of column names (e.g. prompt,completion), then one row per line",
    }[suffix]


def _is_blank(path: Path) -> bool:
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _check_utf8(path: Path, chunk_size: int = 1 << 20) -> None:
    """Refuse a file that is not UTF-8, naming the line of the first bad byte (decoded chunk by
    chunk, each cut at a line end, at C speed)."""
    line, carry = 1, b""
    with path.open("rb") as handle:
        while True:
            block = handle.read(chunk_size)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            chunk, carry = data[:cut], data[cut:]
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as error:
                where = line + chunk.count(b"\n", 0, error.start)
                raise DataFileError(
                    f"{path}, line {where}: not UTF-8 text (byte {chunk[error.start]:#04x}); save the file as UTF-8"
                ) from None
            line += chunk.count(b"\n")
            if not block:
                return


@contextlib.contextmanager
def _datasets_silenced():
    """datasets logs its own parser error before raising; ours replaces it, so hide that one."""
    from datasets.utils import logging as datasets_logging

    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(level)


def _load(builder: str, path: Path, **kwargs):
    import datasets

    with _datasets_silenced():
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def looks_local(name: str) -> bool:
    """Whether ``name`` can only be a local path: a hub name is ``name`` or ``owner/name``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


# ----------------------------------------------------------------------------- JSON


def _read_json(path: Path):
    try:
        rows = _load("json", path)
    except Exception:  # noqa: BLE001 - any failure is examined below and named precisely
        return _parse_json_rows(path)
    return _parse_json_rows(path) if _has_json_feature(rows.features) else rows


def _has_json_feature(feature) -> bool:
    """Whether datasets typed any column (or nested field) as ``Json``: mixed types it could
    not unify, stored in a way that turns JSON-looking strings into numbers or lists."""
    import datasets.features

    json_type = getattr(datasets.features, "Json", None)
    if json_type is None:
        return False
    if isinstance(feature, json_type):
        return True
    if isinstance(feature, dict):
        return any(_has_json_feature(value) for value in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(_has_json_feature(value) for value in feature)
    inner = getattr(feature, "feature", None)
    return inner is not None and _has_json_feature(inner)


def _parse_json_rows(path: Path) -> list[dict]:
    """Every row of a .json/.jsonl file through Python's json, or a DataFileError with the line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # "Extra data": JSON Lines in a .json file, read below
                raise _json_error(path, error.lineno, error, text.splitlines()) from None
        else:
            return _json_document_rows(path, document)
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise _json_error(path, number, error, lines) from None
        if not isinstance(row, dict):
            raise DataFileError(
                f"{path}, line {number}: a JSON {_json_kind(row)}, but each line must be one JSON object "
                f"(a row), e.g. {_EXAMPLE_ROW}"
            )
        rows.append(row)
    return rows


def _json_document_rows(path: Path, document) -> list[dict]:
    if isinstance(document, dict):
        raise DataFileError(
            f"{path}: the top level is one JSON object; expected an array of row objects ([{_EXAMPLE_ROW}, ...]) "
            "or JSON Lines. If the rows sit under a key, give train_data as {path: ..., field: <key>}"
        )
    if not isinstance(document, list):
        raise DataFileError(f"{path}: the top level is a JSON {_json_kind(document)}; expected an array of row objects")
    for position, row in enumerate(document):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}: item {position} of the top-level array is a JSON {_json_kind(row)}; every item must be a row object")
    return document


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _json_error(path: Path, line: int, error: json.JSONDecodeError, lines: list[str]) -> DataFileError:
    first = next((text for text in lines if text.strip()), "")
    hint = ""
    if "," in first and not first.lstrip().startswith(("{", "[")):
        hint = " The file looks like CSV: rename it to .csv (a header line, then one row per line)."
    expected = _expected(path.suffix.lower())
    return DataFileError(f"{path}, line {line}: not valid JSON ({error.msg}, column {error.colno}). Expected {expected}.{hint}")


# ----------------------------------------------------------------------------- Parquet and CSV


def _read_parquet(path: Path):
    try:
        return _load("parquet", path)
    except Exception as error:  # noqa: BLE001 - re-raised below with the file named
        with path.open("rb") as handle:
            head = handle.read(4)
        if head != b"PAR1":
            looks = " (it starts with '{' or '[': it looks like JSON text; rename it to .jsonl or .json)" if head[:1] in (b"{", b"[") else ""
            raise DataFileError(
                f"{path} is not a Parquet file{looks}. Write Parquet with Dataset.to_parquet or pandas' DataFrame.to_parquet"
            ) from None
        raise DataFileError(f"{path}: could not read it as Parquet ({_root_cause(error)})") from None


def _read_csv(path: Path):
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    converters = {name: str for name in header if name.strip() in TEXT_COLUMNS}
    try:
        return _load("csv", path, converters=converters, keep_default_na=False, na_values=[""])
    except Exception as error:  # noqa: BLE001 - re-raised below with the file named
        raise DataFileError(f"{path}: could not read it as CSV ({_root_cause(error)}). Expected {_expected('.csv')}") from None
