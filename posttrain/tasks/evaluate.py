"""Greedy generation and exact-match accuracy: how the demo and the learning tests ask
"did the model learn the task?".

Greedy decoding (no sampling) so a score depends only on the weights, and EOS tracking so a
model that answers right but never stops is visible (it would babble in real use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

Prompt = str | list[dict]


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


def _prompt_ids(tokenizer, prompt: Prompt, chat_template_kwargs: Mapping | None) -> list[int]:
    """Token ids of one prompt: string prompts get the tokenizer's special tokens (e.g. BOS) as
    in training; message lists are rendered by the chat template, which adds its own."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    text = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=False, **dict(chat_template_kwargs or {})
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _stop_ids(tokenizer, stop_token_ids: Sequence[int] | None) -> list[int]:
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids += [int(i) for i in (stop_token_ids or []) if int(i) not in ids]
    if not ids:
        raise ValueError("no stop token: the tokenizer has no eos_token and no stop_token_ids were given")
    return ids


def _split_generation(new_ids: list[int], stop_ids: list[int], tokenizer) -> Generation:
    """Cut one row of generated ids at its first stop token (generate pads finished rows)."""
    for position, token in enumerate(new_ids):
        if token in stop_ids:
            kept = new_ids[: position + 1]
            return Generation(tokenizer.decode(kept, skip_special_tokens=True), kept, True)
    return Generation(tokenizer.decode(new_ids, skip_special_tokens=True), new_ids, False)


def _left_pad(batch_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(B, T)``, padded on the left so that every row's
    next token is generated in the same (last) column."""
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch_ids])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids])
    return input_ids, attention_mask


@torch.no_grad()
def _generate_batch(model, batch_ids: list[list[int]], max_new_tokens: int, stop_ids, pad_id):
    """Greedily continue each row of ``batch_ids``; returns the new ids of each row."""
    input_ids, attention_mask = _left_pad(batch_ids, pad_id)
    output = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences  # (B, T + new)
    return sequences[:, input_ids.shape[1] :].tolist()


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

    Batches of ``batch_size`` are left-padded (so every row's next token sits in the last
    column) with an attention mask; the padding is done here rather than through
    ``tokenizer.padding_side``, so the caller's tokenizer is never modified. ``stop_token_ids``
    add to the tokenizer's EOS: chat templates often end a turn with a token that is not EOS
    (ChatML's ``<|im_end|>``), and stopping on either counts as ``ended_with_eos``. The model is put in eval mode for the call
    and its train/eval mode restored afterwards.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")
    stop_ids = _stop_ids(tokenizer, stop_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    all_ids = [_prompt_ids(tokenizer, p, chat_template_kwargs) for p in prompts]
    was_training = model.training
    model.eval()
    try:
        generations = []
        for start in range(0, len(all_ids), batch_size):
            rows = _generate_batch(model, all_ids[start : start + batch_size], max_new_tokens, stop_ids, pad_id)
            generations.extend(_split_generation(row, stop_ids, tokenizer) for row in rows)
        return generations
    finally:
        model.train(was_training)


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
