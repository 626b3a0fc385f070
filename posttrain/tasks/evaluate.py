"""Greedy generation and exact-match accuracy: how the demo and the learning tests ask
"did the model learn the task?". Generation goes through the rollout engine
(:class:`posttrain.rollout.HFGenerationEngine`), the project's one generation path.

Greedy decoding (no sampling) so a score depends only on the weights, and EOS tracking so a
model that answers right but never stops is visible (it would babble in real use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from posttrain.data.prompts import Prompt, encode_prompts
from posttrain.rollout.generation import HFGenerationEngine
from posttrain.rollout.sampling import SamplingOptions


@dataclass(frozen=True)
class Generation:
    """One greedy completion.

    ``token_ids`` are the generated ids, the stop token included when there is one and no
    padding; ``text`` is their decoding with special tokens skipped; ``ended_with_eos`` is True
    iff generation stopped on a stop token (then ``token_ids[-1]`` is that token) rather than by
    reaching ``max_new_tokens``.
    """

    text: str
    token_ids: list[int]
    ended_with_eos: bool


@dataclass(frozen=True)
class EvalResult:
    """Exact-match accuracy, the share of generations that stopped on a stop token, and every
    ``(prompt, completion, answer)`` triple for inspection."""

    accuracy: float
    eos_rate: float
    samples: list[tuple[Prompt, str, str]]


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 8,
    batch_size: int = 64,
    stop_token_ids: Sequence[int] | None = None,
    chat_template_kwargs: Mapping | None = None,
) -> list[Generation]:
    """Greedy completions of ``prompts`` (strings or message lists), one per prompt, in order.

    Batches of ``batch_size`` are left-padded by the engine (the caller's tokenizer is never
    modified). ``stop_token_ids`` add to the tokenizer's EOS (and the model's
    ``generation_config`` EOS ids): chat templates often end a turn with a token that is not
    EOS (ChatML's ``<|im_end|>``), and stopping on either counts as ``ended_with_eos``. The
    model is put in eval mode for the call and its train/eval mode restored afterwards.
    """
    options = SamplingOptions(
        max_completion_length=max_new_tokens,
        do_sample=False,
        stop_token_ids=tuple(int(i) for i in stop_token_ids or ()),
        chat_template_kwargs=dict(chat_template_kwargs or {}),
    )
    engine = HFGenerationEngine(model, tokenizer, batch_size=batch_size)
    completions = engine.generate(encode_prompts(tokenizer, prompts, options.chat_template_kwargs), options)
    return [Generation(c.text, c.token_ids, c.finish_reason != "length") for c in completions]


def exact_match_accuracy(
    task,
    model,
    tokenizer,
    rows: Sequence[Mapping],
    max_new_tokens: int = 8,
    batch_size: int = 64,
    stop_token_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Greedy-decode every row's ``prompt`` and score it with ``task.score`` against the row's
    ``answer`` (prompt-only rows), or its ``completion`` when it has no ``answer``
    (prompt-completion rows; a message-list completion is scored by its last message)."""
    if not rows:
        raise ValueError("no rows to evaluate")
    answers = []
    for row in rows:
        answer = row["answer"] if "answer" in row else row["completion"]
        answers.append(answer if isinstance(answer, str) else answer[-1]["content"])
    prompts = [row["prompt"] for row in rows]
    generations = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, stop_token_ids)
    scores = [task.score(g.text, a) for g, a in zip(generations, answers)]
    return EvalResult(
        accuracy=sum(scores) / len(scores),
        eos_rate=sum(g.ended_with_eos for g in generations) / len(generations),
        samples=[(p, g.text, a) for p, g, a in zip(prompts, generations, answers)],
    )
