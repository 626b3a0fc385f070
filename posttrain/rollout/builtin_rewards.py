"""Built-in reward functions: exact answer, a format regex, math-answer equivalence, and a
trained reward model. Each factory returns a reward function (see :mod:`posttrain.rollout.rewards`
for the contract) named after the built-in; those reading a column list it in
``required_columns`` so the column check catches a missing one before any generation."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence

from posttrain.errors import ConfigError, MissingDependencyError

# Built-ins that need an optional package: name -> (module to import, how to install it)
OPTIONAL_PACKAGES = {"math_verify_accuracy": ("math_verify", "pip install 'posttrain[math]' (or pip install math-verify)")}


def completion_text(completion) -> str:
    """The text of a completion: a string as is, a message list by its last message's content.
    A multi-turn episode that ended on a tool result (its budget ran out after a call) gave no
    answer: ''."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    last = completion[-1]
    if not isinstance(last, Mapping):
        return str(last)
    return last.get("content") or "" if last.get("role", "assistant") == "assistant" else ""


def _named(fn, name: str, required_columns: Sequence[str] = ()):
    fn.__name__ = fn.__qualname__ = name
    fn.required_columns = tuple(required_columns)
    return fn


def exact_match(completion, answer) -> float:
    """1.0 if ``completion`` is exactly ``answer`` once surrounding whitespace is stripped.

    ``completion`` is decoded text with special tokens skipped, so it carries no EOS or
    end-of-turn marker; any other trailing text (``"85 apples"``, ``"85<|endoftext|>"``)
    scores 0.0. A message list is scored by the content of its last message.
    """
    return 1.0 if completion_text(completion).strip() == str(answer).strip() else 0.0


def exact_answer(column: str = "answer", name: str = "exact_answer"):
    """1.0 when the completion, stripped of surrounding whitespace, equals the row's ``column``
    value (stripped, as a string), else 0.0; None for rows whose value is None
    (:func:`exact_match`, also the rule of :meth:`posttrain.tasks.ArithmeticTask.score`)."""

    def reward(completions, **columns) -> list[float | None]:
        return [None if answer is None else exact_match(c, answer) for c, answer in zip(completions, columns[column])]

    return _named(reward, name, [column])


_REGEX_MODES = ("fullmatch", "match", "search")


def format_regex(pattern: str, mode: str = "fullmatch", flags: int | str = re.DOTALL, strip: bool = True, name: str = "format_regex"):
    """1.0 when the completion matches ``pattern``, else 0.0.

    Args:
        pattern: a Python regular expression, e.g. ``r"<think>.*</think>\\s*<answer>.*</answer>"``.
        mode: ``"fullmatch"`` (the whole completion), ``"match"`` (from its start) or
            ``"search"`` (anywhere).
        flags: ``re`` flags, an int or names joined by ``|`` (``"DOTALL|MULTILINE"``); default
            DOTALL so ``.`` spans lines.
        strip: strip surrounding whitespace from the completion first.
    """
    if mode not in _REGEX_MODES:
        raise ConfigError(f"format_regex: mode must be one of {_REGEX_MODES}, got {mode!r}")
    if isinstance(flags, str):
        try:
            flags = sum(getattr(re.RegexFlag, part.strip().upper()) for part in flags.split("|"))
        except AttributeError as exc:
            raise ConfigError(f"format_regex: unknown flag in {flags!r}; use names such as DOTALL, MULTILINE, IGNORECASE") from exc
    try:
        compiled = re.compile(pattern, flags)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"format_regex: pattern {pattern!r} is not a valid regular expression ({exc})") from exc
    matcher = getattr(compiled, mode)

    def reward(completions, **_) -> list[float]:
        texts = (completion_text(c) for c in completions)
        return [1.0 if matcher(t.strip() if strip else t) else 0.0 for t in texts]

    return _named(reward, name)


def missing_package_message(builtin: str) -> str | None:
    """Why the built-in reward ``builtin`` cannot run here (its optional package is not
    installed), or None. Checked without importing the package."""
    import importlib.util

    if builtin not in OPTIONAL_PACKAGES:
        return None
    module, fix = OPTIONAL_PACKAGES[builtin]
    if importlib.util.find_spec(module) is not None:
        return None
    return f"the {builtin} reward needs the {module.replace('_', '-')} package, which is not installed. Fix: {fix}"


def _import_math_verify():
    problem = missing_package_message("math_verify_accuracy")
    if problem is not None:
        raise MissingDependencyError(problem)
    import math_verify

    return math_verify


def math_verify_accuracy(
    column: str = "answer",
    extract: str | None = r"<answer>(.*?)</answer>",
    reference_extract: str | None = None,
    timeout_seconds: int | None = 5,
    name: str = "math_verify_accuracy",
):
    """1.0 when the completion's final answer is mathematically equal to the row's ``column``
    (``math_verify.parse`` both, then ``math_verify.verify(gold, answer)``), else 0.0. None for
    rows whose reference is None or that ``math-verify`` cannot parse (there is nothing to
    compare against; the per-function ``applied`` metric shows how often).

    ``extract``: a regular expression whose first group holds the answer (DOTALL); when it
    matches, the last match is what gets parsed, else the whole completion. The default reads
    R1-style ``<answer>...</answer>`` tags, which math-verify alone does not see through
    (``parse("<answer>72</answer>")`` finds nothing). None parses the whole completion.

    ``reference_extract``: the same for the reference column, e.g. ``r"####\\s*(.+)"`` for
    GSM8K, whose ``answer`` column holds a worked solution ending in ``#### 72``.

    ``timeout_seconds`` bounds each parse / comparison; math-verify enforces it with
    ``signal.alarm``, which works only in the main thread, so elsewhere it runs without one.
    Needs ``pip install 'posttrain[math]'`` (checked here, when the reward is built).
    """
    math_verify = _import_math_verify()
    pattern = None if extract is None else re.compile(extract, re.DOTALL)
    reference_pattern = None if reference_extract is None else re.compile(reference_extract, re.DOTALL)

    def last_match(text: str, regex) -> str:
        found = regex.findall(text) if regex is not None else []
        return found[-1] if found else text

    def answer_text(completion) -> str:
        return last_match(completion_text(completion), pattern)

    def reward(completions, **columns) -> list[float | None]:
        timeout = timeout_seconds if threading.current_thread() is threading.main_thread() else None
        values: list[float | None] = []
        for completion, reference in zip(completions, columns[column]):
            gold = None if reference is None else math_verify.parse(last_match(str(reference), reference_pattern), parsing_timeout=timeout)
            if not gold:
                values.append(None)
                continue
            answer = math_verify.parse(answer_text(completion), parsing_timeout=timeout)
            correct = bool(answer) and math_verify.verify(gold, answer, timeout_seconds=timeout)
            values.append(1.0 if correct else 0.0)
        return values

    return _named(reward, name, [column])


class RewardModelFunction:
    """A reward model as a reward function: ``scorer.score(prompts, completions)`` as a list.

    ``scorer`` is a :class:`posttrain.models.reward.RewardScorer`; :meth:`to` moves its model
    (a trainer puts it on the accelerator's device).
    """

    def __init__(self, scorer, name: str = "reward_model"):
        self.scorer = scorer
        self.__name__ = name

    def __call__(self, prompts, completions, **_) -> list[float]:
        return self.scorer.score(prompts, completions).tolist()

    def to(self, device) -> RewardModelFunction:
        self.scorer.model.to(device)
        return self


def reward_model_function(
    model_or_path,
    tokenizer=None,
    batch_size: int = 32,
    max_length: int | None = 1024,
    add_eos: bool | None = None,
    chat_template_kwargs: dict | None = None,
    model_dtype: str = "float32",
    name: str = "reward_model",
) -> RewardModelFunction:
    """A trained reward model as a reward function.

    ``model_or_path``: a ``RewardScorer`` (used as is; the other options must stay default), a
    directory / hub name (loaded with ``load_sequence_classifier`` and the tokenizer saved
    there), or a sequence-classifier object (its tokenizer from ``tokenizer`` or, when None,
    from the model's ``name_or_path``). The options are :class:`RewardScorer`'s; use the
    reward trainer's ``max_length`` so sequences are scored as they were trained.
    """
    from posttrain.models.loading import load_sequence_classifier, load_tokenizer
    from posttrain.models.reward import RewardScorer

    if isinstance(model_or_path, RewardScorer):
        if tokenizer is not None:
            raise ConfigError("reward_model_function: a RewardScorer brings its own tokenizer; do not pass tokenizer=")
        return RewardModelFunction(model_or_path, name)
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        model = load_sequence_classifier(path, model_dtype=model_dtype).requires_grad_(False)
        tokenizer = load_tokenizer(tokenizer, fallback_source=path)
    else:
        model = model_or_path
        fallback = getattr(model, "name_or_path", None) or None
        if tokenizer is None and fallback is None:
            raise ConfigError("reward_model_function: this model object has no name_or_path to load its tokenizer from; pass tokenizer=")
        tokenizer = load_tokenizer(tokenizer, fallback_source=fallback)
    scorer = RewardScorer(model, tokenizer, batch_size, max_length, add_eos, chat_template_kwargs)
    return RewardModelFunction(scorer, name)
