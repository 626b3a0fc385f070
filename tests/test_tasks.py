"""The arithmetic task's promises: disjoint splits, aligned rows across formats, wrong answers
that are really wrong, and exact shares of noisy / desirable rows."""

from __future__ import annotations

import pytest

from posttrain.tasks import ArithmeticTask, Problem, wrong_answers


def test_splits_are_disjoint_and_independent_of_seed_and_range():
    small, large = ArithmeticTask(seed=0, max_operand=30), ArithmeticTask(seed=5, max_operand=60)
    train = {p.expression for p in small.split_problems("train")}
    test = {p.expression for p in small.split_problems("test")}
    assert train and test and not train & test
    # a problem keeps its split in a task with another seed and a wider operand range
    large_test = {p.expression for p in large.split_problems("test")}
    assert test <= large_test and not train & large_test


def test_rows_at_the_same_index_ask_the_same_question():
    task = ArithmeticTask(seed=3)
    n = 50
    questions = [row["prompt"] for row in task.prompt_completion("train", n)]
    assert [row["prompt"] for row in task.preference_pairs("train", n)] == questions
    assert [row["prompt"] for row in task.unpaired("train", n)] == questions
    assert [row["prompt"] for row in task.prompt_only("train", n)] == questions
    assert [row["messages"][0]["content"] for row in task.conversations("train", n)] == questions


def test_wrong_answers_are_plausible_and_never_right():
    problem = Problem(47, "+", 38)
    assert wrong_answers(problem) == [58, 75, 84, 86, 95]  # swapped digits, dropped carry, -1, +1, +10
    for p in ArithmeticTask(seed=1).problems("train", 300):
        assert p.answer not in wrong_answers(p) and wrong_answers(p)
    task = ArithmeticTask(seed=1)
    for row, p in zip(task.preference_pairs("test", 300), task.problems("test", 300)):
        assert ArithmeticTask.score(row["chosen"], str(p.answer)) == 1.0
        assert ArithmeticTask.score(row["rejected"], str(p.answer)) == 0.0


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.6, 1.0])
def test_slip_rate_gives_exactly_that_share_of_off_by_one_rows(fraction):
    task = ArithmeticTask(seed=0)
    rows, problems = task.prompt_completion("train", 40, slip_rate=fraction), task.problems("train", 40)
    slips = [int(row["completion"]) - p.answer for row, p in zip(rows, problems)]
    assert set(slips) <= {0, 1}
    for k in range(1, 41):  # every prefix holds floor(k * fraction) slips: batches see the share
        assert sum(slips[:k]) == int(k * fraction)
    with pytest.raises(ValueError, match="slip_rate must be in"):
        task.prompt_completion("train", 4, slip_rate=1.5)


def test_score_is_exact_match_after_stripping():
    assert ArithmeticTask.score(" 85 ", "85") == 1.0
    assert ArithmeticTask.score("85 apples", "85") == 0.0
    assert ArithmeticTask.score([{"role": "assistant", "content": "85"}], "85") == 1.0


def test_echo_pairs_reject_an_operand():
    task = ArithmeticTask(seed=4)
    rows, problems = task.preference_pairs("train", 200, rejected="echo"), task.problems("train", 200)
    for row, p in zip(rows, problems):
        assert int(row["chosen"]) == p.answer and int(row["rejected"]) != p.answer
        assert int(row["rejected"]) in (p.a, p.b) or (p.a == p.b == 0)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in task.preference_pairs("train", 200)]
    zero = ArithmeticTask._echo(Problem(0, "+", 0), 0)
    assert zero is None and ArithmeticTask._echo(Problem(0, "+", 7), 1) == 0  # 7 is the answer: echo the 0
