"""Reward functions: what they receive, how they combine (hand-computed), and that every fault
stops with the function's name, the problem and a sample."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from posttrain.rollout import RewardFunctionError, RewardFunctions

PROMPTS = ["What is 3+4?", "What is 1+1?", "Say hi."]
COMPLETIONS = [" 7", " 3", " hi"]
IDS = [[11, 0], [12, 0], [13, 14]]
COLUMNS = {"answer": ["7", "2", None], "task": ["math", "math", "chat"]}


def _score(funcs, **kwargs):
    return RewardFunctions(funcs, **kwargs)(PROMPTS, COMPLETIONS, IDS, COLUMNS)


def test_functions_receive_what_they_name_and_kwargs_receive_everything():
    received = {}

    def named(completions, answer):
        received["named"] = (completions, answer)
        return [0.0] * len(completions)

    def everything(prompts, **kwargs):
        received["everything"] = (prompts, kwargs)
        return [0.0] * len(prompts)

    _score([named, everything])
    assert received["named"] == (COMPLETIONS, COLUMNS["answer"])
    prompts, kwargs = received["everything"]
    assert prompts == PROMPTS
    assert kwargs == {"completions": COMPLETIONS, "completion_ids": IDS, **COLUMNS}


def test_message_prompts_get_message_completions():
    seen = []

    def reward(completions):
        seen.extend(completions)
        return [1.0] * len(completions)

    prompts = [[{"role": "user", "content": "What is 3+4?"}], "plain"]
    RewardFunctions(reward)(prompts, [" 7", " 8"], [[1], [2]], {})
    assert seen == [[{"role": "assistant", "content": " 7"}], " 8"]


def test_weights_combine_over_the_functions_that_apply():
    correct = lambda completions, answer: [None if a is None else float(c.strip() == a) for c, a in zip(completions, answer)]  # noqa: E731
    length = lambda completions, task: [len(c) / 2 if t == "math" else None for c, t in zip(completions, task)]  # noqa: E731
    result = _score([correct, length], weights=[2.0, -1.0], names=["correct", "length"], no_reward="zero")
    # correct: [1, 0, None]; length: [1.0, 1.0, None] -> total [2 - 1, 0 - 1, 0 (nothing applies)]
    torch.testing.assert_close(result.total, torch.tensor([1.0, -1.0, 0.0]))
    expected = torch.tensor([[1.0, 1.0], [0.0, 1.0], [math.nan, math.nan]])
    torch.testing.assert_close(result.per_function, expected, equal_nan=True)
    assert result.names == ["correct", "length"]
    assert result.metrics == pytest.approx(
        {
            "rewards/correct/applied": 2 / 3, "rewards/correct/mean": 0.5, "rewards/correct/std": 0.5,
            "rewards/length/applied": 2 / 3, "rewards/length/mean": 1.0, "rewards/length/std": 0.0,
            "rewards/no_reward_share": 1 / 3,
            "reward": 0.0, "reward_std": math.sqrt(2 / 3),
        }
    )


def test_a_row_no_function_applies_to_stops_the_run_by_default():
    only_math = lambda completions, task: [1.0 if t == "math" else None for t in task]  # noqa: E731
    with pytest.raises(RewardFunctionError, match=r"no reward function applies to 1 of 3 rows.*row 2: prompt='Say hi.'.*no_reward='zero'"):
        _score([only_math])


def test_outputs_as_tensors_arrays_and_bools_are_accepted():
    result = _score([lambda prompts: torch.tensor([1.0, 2.0, 3.0]), lambda prompts: np.array([0.5, 0.5, 0.5]), lambda prompts: [True, False, torch.tensor(2.0)]])
    torch.testing.assert_close(result.per_function, torch.tensor([[1.0, 0.5, 1.0], [2.0, 0.5, 0.0], [3.0, 0.5, 2.0]]))
    assert result.names == ["lambda", "lambda_2", "lambda_3"]


def _raises(prompts):
    raise KeyError("missing")


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_raises, r"reward function '_raises' raised KeyError: 'missing'\. Sample row 0: prompt='What is 3\+4\?', completion=' 7'"),
        (lambda prompts: [1.0, 2.0], r"'lambda' returned 2 values for 3 completions.*Sample row 0"),
        (lambda prompts: 1.0, r"'lambda' returned 1\.0 \(float\); expected a list of 3 numbers or None"),
        (lambda prompts: torch.ones(3, 1), r"'lambda' returned a Tensor of shape \(3, 1\); expected a list of 3"),
        (lambda prompts: [1.0, "1.0", 0.0], r"'lambda' returned '1\.0' \(str\) for row 1; expected a number or None\. Sample row 1: prompt='What is 1\+1\?', completion=' 3'"),
        (lambda prompts: [1.0, 0.0, float("nan")], r"'lambda' returned nan for row 2; rewards must be finite.*Sample row 2: prompt='Say hi\.'"),
        (lambda prompts: [1.0, float("-inf"), 0.0], r"'lambda' returned -inf for row 1"),
    ],
)
def test_faulty_functions_stop_the_run_with_name_problem_and_sample(fn, message):
    with pytest.raises(RewardFunctionError, match=message):
        _score([fn])


def test_column_check_names_function_and_column_and_lists_the_columns():
    def needs_solution(completions, solution):
        return [0.0] * len(completions)

    def has_default(completions, solution=None):
        return [0.0] * len(completions)

    rewards = RewardFunctions([has_default, needs_solution])
    with pytest.raises(ValueError, match=r"reward function 'needs_solution' needs the column 'solution'.*\(columns: \['answer', 'task'\]\)"):
        rewards.check_columns(["prompt", "answer", "task"])
    rewards.check_columns(["prompt", "solution"])
    with pytest.raises(ValueError, match="needs the column 'solution'"):  # also checked on every call
        rewards(PROMPTS, COMPLETIONS, IDS, COLUMNS)


def test_required_columns_attribute_and_reserved_names():
    reward = functools.partial(lambda completions, **kwargs: [0.0] * len(completions))
    reward.required_columns = ("reference",)
    with pytest.raises(ValueError, match="reward function 'lambda' needs the column 'reference'"):
        RewardFunctions(reward).check_columns(["prompt", "answer"])
    with pytest.raises(ValueError, match=r"column\(s\) \['completions'\] clash"):
        RewardFunctions(lambda prompts: [0.0]).check_columns(["prompt", "completions"])


def test_names_weights_and_policies_are_validated():
    class Brevity:
        def __call__(self, completions):
            return [-len(c) for c in completions]

    assert RewardFunctions([Brevity(), Brevity()]).names == ["Brevity", "Brevity_2"]
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2 reward functions"):
        RewardFunctions([Brevity(), Brevity()], weights=[1.0])
    with pytest.raises(ValueError, match="reward_weights must be finite numbers"):
        RewardFunctions([Brevity()], weights=[float("nan")])
    with pytest.raises(ValueError, match="no_reward must be one of"):
        RewardFunctions([Brevity()], no_reward="skip")
    with pytest.raises(ValueError, match=r"3 prompts but \{'completions': 2\}"):
        RewardFunctions([Brevity()])(PROMPTS, COMPLETIONS[:2], IDS, {})
