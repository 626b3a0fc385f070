"""A deterministic arithmetic task: "What is 47+38?" -> "85".

It is the embedded default of the demo and of the "did it learn" tests of every algorithm, so it
must be small, exact to score, reproducible across processes, and honest: the held-out split
never contains a problem of the train split.

- **Problems** are ``(a, op, b)`` with ``min_operand <= a, b <= max_operand`` and ``op`` one of
  ``+``, ``-``, ``*``. Subtraction only uses ``a >= b`` so every answer is a non-negative
  integer.
- **Splits** (``"train"`` / ``"test"``) are decided per problem by a SHA-256 hash of its text,
  never by Python's ``hash()`` (salted per process) nor by position. A problem is therefore in
  the same split whatever ``n``, ``seed``, ``max_operand`` or ``operators`` are: a model trained
  on one task's train split is never evaluated on its own training problems by another task.
- **Order** within a split is a permutation drawn from ``seed``. Every row method with the same
  ``(split, n)`` walks the same problems in the same order, so a prompt-completion row and a
  preference pair at the same index ask the same question. Asking for more rows than the split
  holds starts a fresh permutation of the split (every problem is used once before any repeats).
- **Prompt/completion boundary.** String prompts end with ``"?"`` and completions start with a
  space (``" 85"``). Tokenizers that fold the space into the next word (GPT-2's ``"Ġ85"``) then
  still split cleanly at the boundary, whereas a prompt ending in ``"? "`` would lose its last
  token to a merge. No EOS is added: the data layer appends it. Conversational rows carry the
  bare answer (``"85"``), since the chat template separates turns.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass

from posttrain.rollout.builtin_rewards import exact_match

OPERATORS = ("+", "-", "*")
SPLITS = ("train", "test")
# Enumerating and shuffling a split is O(problems); past this it is too slow to be a default.
MAX_PROBLEMS = 4_000_000


@dataclass(frozen=True)
class Problem:
    """One question ``a op b``."""

    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        """The exact integer result."""
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b

    @property
    def expression(self) -> str:
        """``"47+38"``: the text hashed to pick the split."""
        return f"{self.a}{self.op}{self.b}"

    @property
    def question(self) -> str:
        """``"What is 47+38?"``."""
        return f"What is {self.expression}?"


def _unit_interval(text: str) -> float:
    """A number in ``[0, 1)`` from the SHA-256 of ``text``: stable across runs and machines."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _derived_seed(*parts: object) -> int:
    """An integer seed for ``random.Random`` from labelled parts, e.g. ``(seed, "train")``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def split_of(problem: Problem, test_fraction: float) -> str:
    """``"test"`` for about ``test_fraction`` of all problems, ``"train"`` for the rest."""
    return "test" if _unit_interval(problem.expression) < test_fraction else "train"


def _swap_last_two_digits(value: int) -> int | None:
    digits = str(value)
    if len(digits) < 2 or digits[-1] == digits[-2]:
        return None
    return int(digits[:-2] + digits[-1] + digits[-2])


def _sum_without_carry(a: int, b: int) -> int:
    """Digit-wise sum that drops every carry: 47+38 -> 75 (7+8=15 keeps 5, 4+3=7)."""
    result, place = 0, 1
    while a or b:
        result += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return result


def wrong_answers(problem: Problem) -> list[int]:
    """Plausible mistakes for ``problem``, sorted, each non-negative and never the answer.

    Off by one, off by ten, the last two digits swapped and (for ``+``) a dropped carry. Never
    empty: ``answer + 1`` is always there.
    """
    answer = problem.answer
    candidates = {answer - 1, answer + 1, answer - 10, answer + 10, _swap_last_two_digits(answer)}
    if problem.op == "+":
        candidates.add(_sum_without_carry(problem.a, problem.b))
    return sorted(c for c in candidates if c is not None and c >= 0 and c != answer)


def _is_picked(index: int, fraction: float) -> bool:
    """Whether row ``index`` is one of the ``fraction`` picked rows: exactly
    ``floor(k * fraction)`` of the first ``k`` rows are, for every ``k``, so any contiguous batch
    holds close to that share."""
    return int((index + 1) * fraction) > int(index * fraction)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


class ArithmeticTask:
    """Seeded generator of arithmetic rows in every data format ``posttrain`` trains on.

    Args:
        seed: picks the order of problems within a split and the wrong answers; not the split.
        max_operand / min_operand: inclusive operand range.
        operators: any of ``"+"``, ``"-"``, ``"*"``.
        test_fraction: share of all problems held out in the ``"test"`` split.

    Every row method takes ``split`` (``"train"`` or ``"test"``) and ``n`` (number of rows;
    ``None`` means one pass over the split) and returns a list of dicts.
    """

    def __init__(
        self,
        seed: int = 0,
        max_operand: int = 99,
        operators: tuple[str, ...] = ("+",),
        min_operand: int = 0,
        test_fraction: float = 0.2,
    ):
        unknown = [op for op in operators if op not in OPERATORS]
        if unknown or not operators:
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS}, got {operators!r}")
        if not 0 <= min_operand <= max_operand:
            raise ValueError(f"need 0 <= min_operand <= max_operand, got {min_operand}, {max_operand}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        span = max_operand - min_operand + 1
        if span * span * len(operators) > MAX_PROBLEMS:
            raise ValueError(
                f"{span}x{span}x{len(operators)} problems is more than {MAX_PROBLEMS:,}; lower max_operand"
            )
        self.seed = seed
        self.min_operand, self.max_operand = min_operand, max_operand
        self.operators = tuple(operators)
        self.test_fraction = test_fraction
        self._pools: dict[str, list[Problem]] = {}

    # ------------------------------------------------------------------ problems

    def split_problems(self, split: str) -> list[Problem]:
        """All problems of ``split`` in canonical (unshuffled) order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._pools:
            operands = range(self.min_operand, self.max_operand + 1)
            pool = [
                problem
                for op in self.operators
                for a, b in itertools.product(operands, operands)
                if op != "-" or a >= b
                for problem in (Problem(a, op, b),)
                if split_of(problem, self.test_fraction) == split
            ]
            if not pool:
                raise ValueError(f"the {split!r} split of this task is empty; widen the operand range")
            self._pools[split] = pool
        return self._pools[split]

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` in this task's seeded order."""
        pool = self.split_problems(split)
        n = len(pool) if n is None else n
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        chosen: list[Problem] = []
        for epoch in itertools.count():
            if len(chosen) >= n:
                break
            order = list(pool)
            random.Random(_derived_seed(self.seed, split, epoch)).shuffle(order)
            chosen.extend(order[: n - len(chosen)])
        return chosen

    def _row_rng(self, kind: str, split: str, index: int) -> random.Random:
        # One generator per row, so row i does not depend on how many rows were asked for.
        return random.Random(_derived_seed(self.seed, kind, split, index))

    def wrong_answer(self, problem: Problem, split: str, index: int) -> int:
        """The seeded plausible mistake used for row ``index`` (see :func:`wrong_answers`)."""
        return self._row_rng("wrong", split, index).choice(wrong_answers(problem))

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _prompt(problem: Problem, conversational: bool, system: str | None):
        if not conversational:
            return problem.question
        messages = [{"role": "system", "content": system}] if system is not None else []
        return messages + [{"role": "user", "content": problem.question}]

    @staticmethod
    def _completion(value: int, conversational: bool):
        if conversational:
            return [{"role": "assistant", "content": str(value)}]
        return f" {value}"

    def prompt_completion(
        self,
        split: str,
        n: int | None = None,
        conversational: bool = False,
        system: str | None = None,
        slip_rate: float = 0.0,
    ) -> list[dict]:
        """Rows ``{"prompt": "What is 47+38?", "completion": " 85"}`` (no EOS; see module doc).

        ``conversational=True`` gives message lists: prompt ``[system?, user]``, completion
        ``[assistant]``.

        ``slip_rate`` makes the demonstrations noisy the way a careless annotator would: that
        share of rows (spread evenly, see :meth:`unpaired`) answers one too high (``" 86"``). SFT
        on ``slip_rate=0.6`` gives a model that has learned to add but whose greedy answer is
        usually the slip -- the start from which preference learning has something to fix.
        """
        _check_fraction("slip_rate", slip_rate)
        return [
            {
                "prompt": self._prompt(p, conversational, system),
                "completion": self._completion(p.answer + int(_is_picked(i, slip_rate)), conversational),
            }
            for i, p in enumerate(self.problems(split, n))
        ]

    def conversations(
        self, split: str, n: int | None = None, turns: int = 1, system: str | None = None
    ) -> list[dict]:
        """Rows ``{"messages": [system?, user, assistant, user, assistant, ...]}``.

        Row ``i`` holds ``turns`` question/answer pairs: problems ``i*turns`` to
        ``(i+1)*turns - 1`` of the split's order, so ``n`` rows use ``n*turns`` problems.
        """
        if turns < 1:
            raise ValueError(f"turns must be at least 1, got {turns}")
        problems = self.problems(split, None if n is None else n * turns)
        rows = []
        for start in range(0, len(problems) - turns + 1, turns):
            messages = [{"role": "system", "content": system}] if system is not None else []
            for p in problems[start : start + turns]:
                messages.append({"role": "user", "content": p.question})
                messages.append({"role": "assistant", "content": str(p.answer)})
            rows.append({"messages": messages})
        return rows

    def preference_pairs(
        self,
        split: str,
        n: int | None = None,
        conversational: bool = False,
        system: str | None = None,
        rejected: str = "slip",
    ) -> list[dict]:
        """Rows ``{"prompt", "chosen", "rejected"}``: the right answer against a wrong one.

        ``rejected="slip"``: a plausible mistake (see :func:`wrong_answers`), hard to tell from
        the answer without redoing the sum. ``rejected="echo"``: one of the operands echoed back
        (``"What is 47+38?"`` -> ``" 47"`` or ``" 38"``, alternating), which a small reward model
        can learn to spot by comparing completion and prompt. Either way ``rejected`` is always
        wrong (0+0 falls back to a slip).
        """
        if rejected not in ("slip", "echo"):
            raise ValueError(f"rejected must be 'slip' or 'echo', got {rejected!r}")
        rows = []
        for i, p in enumerate(self.problems(split, n)):
            wrong = self._echo(p, i) if rejected == "echo" else None
            if wrong is None:
                wrong = self.wrong_answer(p, split, i)
            rows.append(
                {
                    "prompt": self._prompt(p, conversational, system),
                    "chosen": self._completion(p.answer, conversational),
                    "rejected": self._completion(wrong, conversational),
                }
            )
        return rows

    @staticmethod
    def _echo(problem: Problem, index: int) -> int | None:
        """Operand ``index % 2`` of ``problem`` (the other one if that is the answer); None when
        both operands equal the answer."""
        first, second = (problem.a, problem.b) if index % 2 == 0 else (problem.b, problem.a)
        return next((v for v in (first, second) if v != problem.answer), None)

    def unpaired(
        self,
        split: str,
        n: int | None = None,
        desirable_fraction: float = 0.5,
        conversational: bool = False,
        system: str | None = None,
    ) -> list[dict]:
        """Rows ``{"prompt", "completion", "label"}`` for KTO: ``label`` is True iff correct.

        Exactly ``floor(k * desirable_fraction)`` of the first ``k`` rows are desirable, for
        every ``k``: labels are spread evenly, so any contiguous batch is close to the fraction.
        """
        _check_fraction("desirable_fraction", desirable_fraction)
        rows = []
        for i, p in enumerate(self.problems(split, n)):
            label = _is_picked(i, desirable_fraction)
            value = p.answer if label else self.wrong_answer(p, split, i)
            rows.append(
                {
                    "prompt": self._prompt(p, conversational, system),
                    "completion": self._completion(value, conversational),
                    "label": label,
                }
            )
        return rows

    def prompt_only(
        self, split: str, n: int | None = None, conversational: bool = False, system: str | None = None
    ) -> list[dict]:
        """Rows ``{"prompt", "answer"}`` for online RL and evaluation; ``answer`` is e.g. ``"85"``."""
        return [
            {"prompt": self._prompt(p, conversational, system), "answer": str(p.answer)}
            for p in self.problems(split, n)
        ]

    # ------------------------------------------------------------------ scoring

    @staticmethod
    def score(completion: str | list[Mapping], answer: str) -> float:
        """:func:`posttrain.rollout.builtin_rewards.exact_match`: 1.0 if ``completion`` (text, or a
        message list by its last message) is exactly ``answer`` once surrounding whitespace is
        stripped."""
        return exact_match(completion, answer)

    def score_batch(self, completions: list, answers: list[str]) -> list[float]:
        """:meth:`score` for parallel lists (a reward function over a batch)."""
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        return [self.score(c, a) for c, a in zip(completions, answers)]

