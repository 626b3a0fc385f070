"""Sample completions of the offline trainers (SFT, DPO, KTO, reward models have none): at each
step the completion log is due, the model greedily completes a few fixed prompts, so a user sees
what it writes while it trains, not only its loss.

The prompts come from the evaluation rows when there are some, else from the training rows: a
row's ``prompt`` (string or messages), or, for ``messages`` rows, the conversation before its
last assistant turn. Rows without a prompt (plain ``text``) are skipped. The row's own answer
(``completion``, ``chosen``, or that last assistant turn) is shown beside the generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Tokens generated per sample at most; generation stops earlier at EOS / end of turn.
MAX_SAMPLE_TOKENS = 128


def _answer_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[-1], Mapping):
        return str(value[-1].get("content", ""))
    return ""


def sample_prompts(rows, count: int) -> list[dict]:
    """Up to ``count`` ``{"prompt", "expected"}`` pairs from the first rows that have a prompt."""
    found = []
    for index in range(len(rows)):
        if len(found) >= count:
            break
        row = rows[index]
        if not isinstance(row, Mapping):
            continue
        if row.get("prompt"):
            expected = row.get("completion", row.get("chosen", row.get("answer", "")))
            found.append({"prompt": row["prompt"], "expected": _answer_text(expected)})
        elif isinstance(row.get("messages"), list):
            messages = row["messages"]
            last = max((i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "assistant"), default=0)
            if last > 0:
                found.append({"prompt": messages[:last], "expected": str(messages[last].get("content", ""))})
    return found


def generate_samples(
    model, tokenizer, accelerator, prompts: list[dict], chat_template_kwargs: Mapping | None = None, weights=None
) -> list[dict]:
    """Greedy completions of ``prompts`` as completion-log rows. Every process generates (a
    sharded model needs them all to gather its weights); the caller logs the main process's rows.
    ``weights``: the engine's source of whole weights under sharding (see ``HFGenerationEngine``)."""
    from posttrain.data.prompts import encode_prompts, end_of_turn_ids
    from posttrain.rollout import HFGenerationEngine, SamplingOptions

    conversational = any(not isinstance(p["prompt"], str) for p in prompts)
    options = SamplingOptions(
        max_completion_length=MAX_SAMPLE_TOKENS,
        do_sample=False,
        stop_token_ids=tuple(end_of_turn_ids(tokenizer)) if conversational else (),
        chat_template_kwargs=dict(chat_template_kwargs or {}),
    )
    engine = HFGenerationEngine(model, tokenizer, accelerator=accelerator, weights=weights)
    ids = encode_prompts(tokenizer, [p["prompt"] for p in prompts], chat_template_kwargs)
    completions = engine.generate(ids, options)
    return [
        {"prompt": p["prompt"], "completion": c.text, "expected": p["expected"], "tokens": len(c.token_ids), "stopped": c.finish_reason}
        for p, c in zip(prompts, completions)
    ]
