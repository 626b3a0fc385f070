"""Distillation rows: prompt-completion rows (the dataset's completions are scored by the
teacher: off-policy), prompt-only rows (the student writes the completions: on-policy), or
prompt-completion rows used both ways, batch by batch (GKD's mix).

Prompt-completion rows are tokenized exactly as SFT tokenizes them (:func:`prepare_lm_data` with
``loss_mode="completion"``: the chat template for conversations, EOS for plain text, the
prompt/completion boundary as a common prefix, every change counted), then split at the first
trained token: ``prompt_ids`` is what the student is prompted with in an on-policy batch and
``completion_ids`` what the teacher and student compare in an off-policy one. Prompt-only rows
go through :func:`~posttrain.data.prompt_only.prepare_prompts`, as for GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.data import formats
from posttrain.data.prepare import column_names, first_row, prepare_lm_data
from posttrain.data.prompt_only import prepare_prompts
from posttrain.data.tokenize import LMDataOptions


@dataclass
class DistillationData:
    """``items``: one dict per example with ``row`` (the row's index), ``prompt`` (as given, the
    system prompt applied), ``prompt_ids``, ``columns`` (``{}``: distillation has no reward
    functions to pass them to) and, for prompt-completion rows, ``completion_ids`` and
    ``completion_mask`` (one bool per completion token: False on tokens the model does not
    write, such as a tool's message inside a multi-message completion) and ``completion_cut``
    (True when it was cut to ``max_completion_length``); prompt-only rows have
    ``completion_ids`` None."""

    items: list[dict]
    data_format: formats.DataFormat
    notes: list[str] = field(default_factory=list)

    @property
    def has_completions(self) -> bool:
        return self.items[0]["completion_ids"] is not None

    def lines(self) -> list[str]:
        """What happened to the data, for the console."""
        kind = "prompt-completion (off-policy batches score these completions)" if self.has_completions else "prompt-only (the student writes every completion)"
        return [*self.notes, f"{len(self.items)} examples, {kind}"]


def prepare_distillation_data(
    rows,
    tokenizer,
    *,
    max_completion_length: int,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template_kwargs: dict | None = None,
) -> DistillationData:
    """Validate and tokenize distillation rows (a list of dicts or a ``datasets.Dataset``).

    Dataset completions longer than ``max_completion_length`` tokens are cut to it (counted),
    so that off-policy and on-policy batches compare completions of the same length limit.
    """
    data_format = formats.detect_format(column_names(rows), first_row(rows))
    if data_format.name != formats.PROMPT_COMPLETION:
        # prompt-only rows (or rows of another format with a prompt: only the prompt is used, said)
        prepared = prepare_prompts(
            rows, tokenizer, system_prompt=system_prompt, chat_template_kwargs=chat_template_kwargs, max_prompt_length=max_prompt_length
        )
        items = [{**item, "columns": {}, "completion_ids": None, "completion_mask": None, "completion_cut": False} for item in prepared.items]
        return DistillationData(items, prepared.data_format, [line for line in prepared.lines() if "reward functions" not in line])
    if system_prompt:
        rows, data_format = _with_system_prompt(rows, system_prompt), formats.DataFormat(formats.PROMPT_COMPLETION, True)
    options = LMDataOptions(max_length=None, max_prompt_length=max_prompt_length, loss_mode="completion", chat_template_kwargs=dict(chat_template_kwargs or {}))
    prepared = prepare_lm_data(rows, tokenizer, options, desc="tokenizing distillation rows")
    items, cut, cut_tokens = [], 0, 0
    for example in prepared.examples:
        ids, weights = list(example["input_ids"]), list(example["loss_weights"])
        trained = [i for i, w in enumerate(weights) if w]
        first, last = trained[0], trained[-1]
        completion, mask = ids[first : last + 1], [w > 0 for w in weights[first : last + 1]]
        too_long = len(completion) > max_completion_length
        if too_long:
            cut, cut_tokens = cut + 1, cut_tokens + len(completion) - max_completion_length
            completion, mask = completion[:max_completion_length], mask[:max_completion_length]
        item = {"row": example["row"], "prompt": rows[example["row"]]["prompt"], "prompt_ids": ids[:first], "columns": {}}
        items.append({**item, "completion_ids": completion, "completion_mask": mask, "completion_cut": too_long})
    notes = prepared.report.lines()
    if cut:
        notes.insert(0, f"cut {cut} completion(s) to max_completion_length, losing {cut_tokens} token(s)")
    return DistillationData(items, data_format, notes)


def _with_system_prompt(rows, system_prompt: str) -> list[dict]:
    """String prompt-completion rows as conversations: the system message, the prompt as the
    user's message, the completion as the assistant's (message-list rows get the system message
    first unless they start with one)."""
    converted = []
    for row in rows:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not prompt or prompt[0].get("role") != "system":
            prompt = [{"role": "system", "content": system_prompt}, *prompt]
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        converted.append({**dict(row), "prompt": prompt, "completion": completion})
    return converted
