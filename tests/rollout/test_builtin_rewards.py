"""Built-in rewards, a reward model as a reward function, and rewards from the CLI's YAML."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from posttrain.models.reward import RewardScorer
from posttrain.rollout import (
    BUILTIN_REWARDS,
    RewardFunctions,
    exact_answer,
    format_regex,
    math_verify_accuracy,
    resolve_reward_funcs,
    reward_model_function,
)

R1_FORMAT = r"<think>.*</think>\s*<answer>.*</answer>"


def test_exact_answer_is_the_tasks_rule_on_a_chosen_column():
    reward = exact_answer(column="solution")
    completions = [" 85 ", "85 apples", [{"role": "assistant", "content": "85\n"}], " 85"]
    assert reward(completions, solution=["85", "85", "85", None]) == [1.0, 0.0, 1.0, None]
    assert reward.__name__ == "exact_answer" and reward.required_columns == ("solution",)


def test_format_regex_modes_and_flags():
    strict = format_regex(R1_FORMAT)
    good = "<think>7 = 3 + 4\ncarry nothing</think>\n<answer>7</answer>"
    assert strict([good, f"  {good}\n", f"So: {good}", "<answer>7</answer>"]) == [1.0, 1.0, 0.0, 0.0]
    assert format_regex(R1_FORMAT, mode="search")([f"So: {good}"]) == [1.0]
    assert format_regex("<ANSWER>.*</answer>", flags="DOTALL|IGNORECASE")(["<answer>7</answer>"]) == [1.0]
    with pytest.raises(ValueError, match=r"format_regex: pattern '<think>\(' is not a valid regular expression"):
        format_regex("<think>(")
    with pytest.raises(ValueError, match="mode must be one of"):
        format_regex(R1_FORMAT, mode="contains")


def test_math_verify_accuracy_compares_values_not_strings():
    reward = math_verify_accuracy()
    completions = [
        "The answer is $\\frac{1}{2}$",
        "<think>8*9 = 72, not 70</think><answer>72</answer>",  # read inside the tags
        "\\boxed{3}",
        "I do not know",
        "anything",
        "anything",
    ]
    assert reward(completions, answer=["0.5", "72", "4", "7", None, "no number here"]) == [1.0, 1.0, 0.0, 0.0, None, None]


def test_math_verify_missing_is_a_clear_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` fail
    with pytest.raises(ImportError, match=r"pip install 'posttrain\[math\]'"):
        math_verify_accuracy()


PROMPTS = ["What is 3+4?", "What is 47+38?", "Hello!"]
COMPLETIONS = [" 7", " 85", " How are you today?"]


@pytest.fixture(scope="module")
def classifier(model_path):
    path = model_path("classifier-llama")
    return path, AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_reward_model_function_scores_like_its_scorer(classifier):
    path, model, tokenizer = classifier
    expected = RewardScorer(model, tokenizer).score(PROMPTS, COMPLETIONS)
    assert len(set(expected.tolist())) == 3  # a real signal, not a constant
    from_path = reward_model_function(path)
    from_object = reward_model_function(model)  # tokenizer found through name_or_path
    from_scorer = reward_model_function(RewardScorer(model, tokenizer))
    for reward in (from_path, from_object, from_scorer):
        torch.testing.assert_close(torch.tensor(reward(PROMPTS, COMPLETIONS)), expected)
    assert from_path.__name__ == "reward_model"
    assert not any(p.requires_grad for p in from_path.scorer.model.parameters())


def test_reward_model_on_message_prompts_scores_the_assistant_reply(classifier):
    path, model, tokenizer = classifier
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    # RewardFunctions hands message prompts message completions; the scorer takes a string
    # reply of a message prompt as the assistant's message: both must score alike.
    expected = RewardScorer(model, tokenizer).score(messages, COMPLETIONS)
    result = RewardFunctions([RewardScorer(model, tokenizer)])(messages, COMPLETIONS, [[1]] * 3, {})
    torch.testing.assert_close(result.total, expected)


def test_reward_model_scores_an_empty_reply_as_the_prompt_then_its_end(classifier):
    """A policy that emits EOS first writes "": it is scored (not refused as an empty data row),
    as the prompt followed by EOS, or by the template's empty assistant turn for messages."""
    path, model, tokenizer = classifier
    scorer = RewardScorer(model, tokenizer)
    ids = tokenizer(PROMPTS[0])["input_ids"] + [tokenizer.eos_token_id]
    expected = model(input_ids=torch.tensor([ids])).logits[0, 0]
    torch.testing.assert_close(scorer.score([PROMPTS[0]], [""])[0], expected)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": ""}], tokenize=False)
    turn = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert scorer.tokenize(messages, "")["input_ids"] == turn
    assert scorer.tokenize(messages, " 7")["input_ids"][: len(turn) - 3] == turn[: len(turn) - 3]  # same rendering up to the reply


def test_yaml_specs_resolve_to_reward_functions(tmp_path, monkeypatch, classifier):
    (tmp_path / "my_rewards.py").write_text("def brevity(completions, **kwargs):\n    return [-float(len(c)) for c in completions]\n")
    (tmp_path / "loose" / "shout.py").parent.mkdir()
    (tmp_path / "loose" / "shout.py").write_text("def shout(completions):\n    return [float(\"!\" in c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = yaml.safe_load(textwrap.dedent(f"""
        reward_funcs:
          - exact_answer
          - {{name: exact_answer, column: solution}}
          - {{name: format_regex, pattern: "<answer>.*</answer>", mode: search}}
          - {{name: reward_model, path: {classifier[0]}, max_length: 64}}
          - my_rewards:brevity
          - {tmp_path / "loose" / "shout.py"}:shout
          - {classifier[0]}
    """))["reward_funcs"]
    funcs = resolve_reward_funcs(spec)
    import my_rewards

    assert funcs[4] is my_rewards.brevity
    rewards = RewardFunctions(funcs)
    assert rewards.names == ["exact_answer", "exact_answer_2", "format_regex", "reward_model", "brevity", "shout", "reward_model_2"]
    rewards.check_columns(["prompt", "answer", "solution"])
    result = rewards(["What is 3+4?", "Yell"], [" 7", "<answer>NO!</answer>"], [[1], [2]], {"answer": ["7", "8"], "solution": ["6", None]})
    assert result.per_function[:, [0, 2, 4, 5]].tolist() == [[1.0, 0.0, -2.0, 0.0], [0.0, 1.0, -20.0, 1.0]]
    assert result.per_function[0, 1] == 0.0 and torch.isnan(result.per_function[1, 1])
    assert funcs[3].scorer.options.max_length == 64 and funcs[6].scorer.options.max_length == 1024


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("exact", r"reward_funcs\[0\]: unknown reward 'exact'\. A reward is a built-in name \(exact_answer, format_regex, math_verify_accuracy, reward_model\)"),
        ("format_regex", r"built-in reward 'format_regex' cannot be built from options \{\} \(missing a required argument: 'pattern'\)\. Its options: pattern, mode, flags, strip, name"),
        ({"name": "exact_answer", "colum": "x"}, r"cannot be built from options \{'colum': 'x'\} .*Its options: column, name"),
        ({"name": "reward_model"}, r"Its options: path, tokenizer, batch_size"),
        ({"name": "my.module:fn", "weight": 2}, r"options are for built-in rewards; 'name' must be one of"),
        ("no_such_module_xyz:fn", r"cannot import module 'no_such_module_xyz'"),
        ("posttrain.rollout:no_such_function", r"'posttrain.rollout' has no attribute 'no_such_function'"),
        ("posttrain.rollout:__all__", r"'posttrain.rollout:__all__' is a list, not callable \(a reward must be\)"),
        ("missing/rewards.py:fn", r"reward file 'missing/rewards.py' does not exist"),
        (3, r"reward_funcs\[0\]: int 3 is not a reward"),
    ],
)
def test_bad_specs_are_refused_with_the_forms_that_work(item, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward_funcs([item])


def test_model_objects_and_empty_lists_are_refused(classifier):
    with pytest.raises(ValueError, match=r"a model object is not a reward function\. Fix: reward_model_function\(model, tokenizer\)"):
        resolve_reward_funcs([classifier[1]])
    with pytest.raises(ValueError, match="no reward functions given"):
        resolve_reward_funcs([])
    assert set(BUILTIN_REWARDS) == {"exact_answer", "format_regex", "math_verify_accuracy", "reward_model"}
