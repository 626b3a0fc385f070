"""Bad-input corpus, part 2: data files and rows. Every case ends in a DataError whose message
names the file and line or the row and field, and the fix, or in a correct preparation of the
data (unusual but valid inputs)."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.data.errors import ChatTemplateError, DataFormatError
from posttrain.data.loading import load_rows
from posttrain.data.preference import prepare_preference_pairs, prepare_unpaired
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions
from posttrain.errors import DataError, DataFileError

OBJECT = '{"prompt": "1+1=", "completion": "2"}'

# (file name, bytes, fragments the message must contain)
BAD_FILES = [
    ("broken.jsonl", f'{OBJECT}\n{{"prompt": "2+2=", "completion": "4"\n', ["broken.jsonl, line 2", "not valid JSON", "one JSON object per line"]),
    ("array.jsonl", f'{OBJECT}\n["2+2=", "4"]\n', ["array.jsonl, line 2", "a JSON array", "must be one JSON object"]),
    ("scalar.jsonl", f"{OBJECT}\n42\n", ["scalar.jsonl, line 2", "a JSON number"]),
    ("empty.jsonl", "", ["empty.jsonl is empty", "JSON Lines"]),
    ("blank.jsonl", "  \n\n \n", ["blank.jsonl is empty"]),
    ("table.jsonl", "prompt,completion\n1+1=,2\n", ["table.jsonl, line 1", "not valid JSON", "looks like CSV", "rename it to .csv"]),
    ("rows.parquet", f"{OBJECT}\n", ["rows.parquet is not a Parquet file", "looks like JSON", "rename it to .jsonl"]),
    ("noise.parquet", "PAR1 but not really a parquet file", ["noise.parquet", "could not read it as Parquet"]),
    ("rows.txt", "1+1= 2\n", ["unsupported file type '.txt'", ".jsonl", ".parquet", ".csv"]),
    ("rows.json", '[{"prompt": "a", "completion": "b"}, ["c"]]', ["rows.json: item 1 of the top-level array is a JSON array"]),
    ("broken.json", '[{"prompt": "a", "completion": "b"},\n {"prompt": }]', ["broken.json, line 2", "not valid JSON", "array of objects"]),
    ("empty.csv", "", ["empty.csv is empty", "header line"]),
    ("ragged.csv", "prompt,completion\n1+1=,2\n2+2=,4,extra,fields\n", ["ragged.csv: could not read it as CSV", "line 3"]),
]


@pytest.mark.parametrize("name, content, fragments", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_names_the_file_the_line_and_the_format(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFileError) as error:
        load_rows(str(path))
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


@pytest.mark.parametrize(
    "source, fragments",
    [
        ("{tmp}/missing.jsonl", ["no such file", "missing.jsonl"]),
        ("./no/such/dir", ["no such file or directory ./no/such/dir"]),
        ({"split": "train"}, ["expected a list of rows, a Dataset, a path"]),
        (42, ["expected a list of rows"]),
    ],
)
def test_bad_data_source(tmp_path, source, fragments):
    if isinstance(source, str):
        source = source.format(tmp=tmp_path)
    with pytest.raises(DataError if isinstance(source, str) else ValueError) as error:
        load_rows(source, "train_data")
    for fragment in fragments:
        assert fragment in str(error.value)


def _jsonl(tmp_path, rows, name="rows.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


OPTIONS = LMDataOptions(max_length=64)


def test_csv_numeric_completions_are_text(tmp_path, chatml):
    # CSV has no types: "113" is the text the model must write, not a number to refuse
    path = tmp_path / "sums.csv"
    path.write_text("prompt,completion\n100+13=,113\n1+1=,2\n7/2=,3.50\n")
    rows = load_rows(str(path))
    assert rows["completion"] == ["113", "2", "3.50"]
    prepared = prepare_lm_data(rows, chatml, OPTIONS)
    assert chatml.decode(prepared.examples[0]["input_ids"]).startswith("100+13=113")


def test_kto_csv_with_numeric_completions_and_boolean_labels(tmp_path, chatml):
    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\n1+1=,2,True\n1+1=,3,False\n2+2=,4,true\n")
    prepared = prepare_unpaired(load_rows(str(path)), chatml, OPTIONS)
    assert [item["label"] for item in prepared.items] == [True, False, True]


def test_lone_surrogate_in_a_file_names_the_row(tmp_path, chatml):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{OBJECT}\n{{"prompt": "x", "completion": "caf\\ud800"}}\n')
    with pytest.raises(DataFormatError, match=r"row 1, field 'completion': invalid character .* lone surrogate"):
        prepare_lm_data(load_rows(str(path)), chatml, OPTIONS)


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(OBJECT.encode() + b'\n{"prompt": "x", "completion": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=r"latin1.jsonl, line 2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        load_rows(str(path))


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 64, 1 << 20])
def test_utf8_check_counts_lines_across_chunks(tmp_path, chunk_size):
    from posttrain.data.files import _check_utf8

    path = tmp_path / "rows.csv"
    path.write_bytes("prompt,completion\ncafé,ü\n".encode() + b"x,\xff\n" + b"y,z\n")
    with pytest.raises(DataFileError, match="line 3:"):
        _check_utf8(path, chunk_size)
    path.write_bytes("prompt,completion\ncafé,ü\nno newline at the end ✓".encode())
    _check_utf8(path, chunk_size)


def test_file_with_mixed_content_types_trains(tmp_path, chatml):
    # one row's content is a string, another's a list of text parts: both are text
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "1+1"}, {"type": "text", "text": "="}]}, {"role": "assistant", "content": "2"}]},
    ]
    prepared = prepare_lm_data(load_rows(_jsonl(tmp_path, rows)), chatml, OPTIONS)
    assert "<|im_start|>user\n1+1=<|im_end|>" in chatml.decode(prepared.examples[1]["input_ids"])


# ----------------------------------------------------------------------------- rows

USER = {"role": "user", "content": "1+1="}
REPLY = {"role": "assistant", "content": "2"}

# (rows, preparation, fragments): preparation "lm", "pairs" or "unpaired"
BAD_ROWS = [
    ([{"text": "a"}, ["not", "a", "row"]], "lm", ["row 1", "expected a mapping", "got list"]),
    (["just a string"], "lm", ["row 0", "got str"]),
    ([{"text": "a"}, {"text": ""}], "lm", ["row 1, field 'text': empty text"]),
    ([{"text": 12}], "lm", ["row 0, field 'text': expected a string, got int"]),
    ([{"text": "ok"}, {"text": "bad \ud800 text"}], "lm", ["row 1, field 'text'", "lone surrogate", "position 4"]),
    ([{"messages": [USER, {"role": "assistant", "content": "x\udc80"}]}], "lm", ["row 0, field 'messages[1].content'", "lone surrogate"]),
    ([{"messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "url": "a.png"}]}, REPLY]}], "lm",
     ["row 0, field 'messages[0].content[1]'", "'image' part", "only text"]),
    ([{"messages": [{"role": "user", "content": ["plain string part"]}, REPLY]}], "lm", ["messages[0].content[0]", "not {'type': 'text'"]),
    ([{"messages": [{"role": "user", "content": 7}, REPLY]}], "lm", ["messages[0].content", "expected a string, got int"]),
    ([{"messages": [USER, {"role": "assistant", "content": ""}]}], "lm", ["row 0, field 'messages[1].content'", "assistant turn with empty content"]),
    ([{"messages": [USER, {"role": "assistant", "content": "  \n"}]}], "lm", ["messages[1].content", "empty content"]),
    ([{"messages": [USER, {"role": "assistant", "content": [{"type": "text", "text": ""}]}]}], "lm", ["messages[1].content", "empty content"]),
    ([{"messages": [USER, {"role": "bot", "content": "2"}]}], "lm", ["messages[1].role", "unknown role 'bot'"]),
    ([{"messages": [USER, REPLY]}, {"messages": [USER, {"role": "assistant"}]}], "lm", ["row 1", "messages[1].content", "missing"]),
    ([{"prompt": "1+1=", "completion": None}], "lm", ["row 0", "completion", "missing"]),
    ([{"question": "1+1=", "answer": "2"}], "lm", ["answer, question", "match no supported format"]),
    ([], "lm", ["the dataset is empty"]),
    ([{"prompt": "q", "chosen": " a", "rejected": " b", "margin": float("nan")}], "pairs", ["row 0, field 'margin'", "nan is not a finite number"]),
    ([{"prompt": "q", "chosen": " a", "rejected": " b", "margin": math.inf}], "pairs", ["field 'margin'", "inf is not a finite number"]),
    ([{"prompt": "q", "chosen": " a", "rejected": " b", "margin": "high"}], "pairs", ["field 'margin'", "expected a number, got str"]),
    ([{"prompt": "q", "chosen": " a", "rejected": " a"}], "pairs", ["field 'rejected'", "identical to 'chosen'"]),
    ([{"chosen": "one thing", "rejected": "another"}], "pairs", ["do not share a prompt", "add a 'prompt' column"]),
    ([{"prompt": "q", "chosen": " a", "rejected": " b"}, [1, 2]], "pairs", ["row 1", "expected a mapping"]),
    ([], "pairs", ["the dataset is empty"]),
    ([{"prompt": "q", "completion": " a", "label": "yes"}], "unpaired", ["row 0, field 'label'", "expected true/false"]),
    ([{"prompt": "q", "completion": " a", "label": 1}], "unpaired", ["field 'label'", "boolean"]),
]


def _prepare(kind: str, rows, tokenizer):
    prepare = {"lm": prepare_lm_data, "pairs": prepare_preference_pairs, "unpaired": prepare_unpaired}[kind]
    return prepare(rows, tokenizer, OPTIONS)


@pytest.mark.parametrize("rows, kind, fragments", BAD_ROWS, ids=[f"{case[1]}-{i}" for i, case in enumerate(BAD_ROWS)])
def test_bad_row_names_the_row_and_the_field(chatml, rows, kind, fragments):
    with pytest.raises(DataError) as error:
        _prepare(kind, rows, chatml)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_conversations_need_a_chat_template(tokenizers):
    with pytest.raises(ChatTemplateError, match="needs a chat template"):
        prepare_lm_data([{"messages": [USER, REPLY]}], tokenizers["no_template"], OPTIONS)


def test_text_parts_are_joined_and_trained_on(chatml):
    # the common multimodal-ready format with text only: same tokens as the plain string
    parts = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "1+"}, {"type": "text", "text": "1="}]}, {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]}]
    plain = [{"messages": [USER, REPLY]}]
    assert _prepare("lm", parts, chatml).examples[0]["input_ids"] == _prepare("lm", plain, chatml).examples[0]["input_ids"]


def test_extra_columns_of_mixed_types_are_ignored(chatml):
    # Arrow cannot store a column that is a number in one row and text in another; we never read it
    rows = [{"prompt": "1+1=", "completion": "2", "meta": 1}, {"prompt": "2+2=", "completion": "4", "meta": "x"}]
    assert len(_prepare("lm", rows, chatml).examples) == 2


def test_numbers_in_a_margin_column_are_accepted(chatml):
    rows = [{"prompt": "q", "chosen": " a", "rejected": " b", "margin": 2}, {"prompt": "q", "chosen": " c", "rejected": " d", "margin": None}]
    assert [item["margin"] for item in _prepare("pairs", rows, chatml).items] == [2.0, None]
