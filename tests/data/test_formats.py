"""Format detection and the clear error every malformed row kind gets (row, field, fix)."""

import numpy as np
import pytest

from posttrain.data import formats
from posttrain.data.errors import DataFormatError


def detect(rows):
    return formats.detect_format(rows[0].keys(), rows[0])


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"text": "hi"}, ("text", False)),
        ({"messages": [{"role": "user", "content": "hi"}]}, ("messages", True)),
        ({"prompt": "a", "completion": "b"}, ("prompt_completion", False)),
        ({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]}, ("prompt_completion", True)),
        ({"prompt": "a", "answer": "1"}, ("prompt_only", False)),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, ("preference", False)),
        ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}, ("preference", True)),
        ({"prompt": "a", "completion": "b", "label": True}, ("unpaired", False)),
    ],
)
def test_detects_every_format(row, expected):
    found = detect([row])
    assert (found.name, found.conversational) == expected


def test_unknown_columns_list_the_accepted_sets():
    with pytest.raises(DataFormatError, match="match no supported format") as error:
        formats.detect_format(["question", "answer"])
    assert "prompt, completion" in str(error.value)


def check(rows, fragment_field, fragment_problem, *, require_assistant=False):
    data_format = detect(rows)
    with pytest.raises(DataFormatError) as error:
        formats.validate_rows(rows, data_format, require_assistant=require_assistant)
    message = str(error.value)
    assert f"field '{fragment_field}'" in message
    assert fragment_problem in message
    assert "Fix:" in message
    return error.value


def test_missing_key_names_row_and_field():
    error = check([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}], "completion", "missing")
    assert error.row == 1 and "row 1" in str(error)


def test_missing_key_in_a_python_list_row():
    check([{"text": "a"}, {"txt": "b"}], "text", "missing")


def test_wrong_type():
    check([{"prompt": "a", "completion": 7}], "completion", "expected a string, got int")


def test_empty_text():
    check([{"text": "   "}], "text", "empty text")


def test_empty_messages():
    check([{"messages": [{"role": "user", "content": "x"}]}, {"messages": []}], "messages", "no messages")


def test_unknown_role():
    rows = [{"messages": [{"role": "user", "content": "x"}, {"role": "assitant", "content": "y"}]}]
    error = check(rows, "messages[1].role", "unknown role 'assitant'")
    assert "assistant" in error.fix


def test_missing_role_and_content():
    check([{"messages": [{"content": "x"}]}], "messages[0].role", "missing role")
    check([{"messages": [{"role": "user"}]}], "messages[0].content", "missing")


def test_message_not_a_dict():
    check([{"messages": ["hello"]}], "messages[0]", "expected a dict")


def test_no_assistant_turn_when_assistant_loss_asked():
    rows = [{"messages": [{"role": "user", "content": "x"}]}]
    formats.validate_rows(rows, detect(rows))  # fine for loss_mode='all'
    check(rows, "messages", "no assistant turn", require_assistant=True)


def test_conversational_completion_needs_an_assistant_message():
    rows = [{"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]}]
    check(rows, "completion", "no assistant turn")


def test_mixed_string_and_messages():
    rows = [
        {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]},
        {"prompt": "plain", "completion": [{"role": "assistant", "content": "b"}]},
    ]
    check(rows, "prompt", "expected a list of messages, got str")


def test_preference_missing_chosen():
    check([{"prompt": "p", "chosen": None, "rejected": "r"}], "chosen", "missing")


def test_preference_chosen_identical_to_rejected():
    check([{"prompt": "p", "chosen": "same", "rejected": "same"}], "rejected", "identical to 'chosen'")


def test_preference_margin_must_be_a_number():
    check([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}], "margin", "expected a number")


@pytest.mark.parametrize("label", [1, 0, "true", None])
def test_unpaired_label_must_be_bool(label):
    rows = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "c", "label": label}]
    check(rows, "label", "missing" if label is None else "expected true/false")


def test_numpy_bool_label_is_accepted():
    rows = [{"prompt": "p", "completion": "c", "label": np.bool_(True)}]
    assert formats.validate_rows(rows, detect(rows)) == 1


def test_row_that_is_not_a_dict():
    data_format = formats.DataFormat("text", False)
    with pytest.raises(DataFormatError, match="row 0, field '<row>': expected a dict"):
        formats.validate_rows(["just a string"], data_format)


def test_empty_dataset():
    with pytest.raises(DataFormatError, match="empty"):
        formats.validate_rows([], formats.DataFormat("text", False))


def test_preference_prompt_repeating_the_first_user_turn_says_to_drop_it():
    # the shape of HuggingFaceH4/ultrafeedback_binarized
    turn = [{"role": "user", "content": "What is 2+2?"}]
    row = {"prompt": "What is 2+2?", "chosen": turn + [{"role": "assistant", "content": "4"}], "rejected": turn + [{"role": "assistant", "content": "5"}]}
    check([row], "prompt", "already start with it")
