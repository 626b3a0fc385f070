"""Prompt-only rows for online RL (GRPO, PPO): validated, rendered and tokenized once.

The online trainers and ``posttrain inspect --algorithm grpo|ppo`` both go through
:func:`prepare_prompts`, so what ``inspect`` shows is exactly what the policy is prompted with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.data import formats
from posttrain.data.prepare import column_names, first_row
from posttrain.data.prompts import encode_prompts

# Columns the trainer consumes itself; every other column goes to the reward functions by name.
OWN_FIELDS = ("prompt",)


@dataclass
class PreparedPrompts:
    """``items``: one dict per row with ``row`` (its index), ``prompt`` (string or messages, the
    system prompt applied), ``prompt_ids`` (list[int], left-truncated to ``max_prompt_length``)
    and ``columns`` (the row's other columns, for the reward functions)."""

    items: list[dict]
    data_format: formats.DataFormat
    columns: list[str]
    max_prompt_length: int | None = None
    shortened: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What happened to the data, for the console."""
        lines = list(self.notes)
        lines.append(f"{len(self.items)} prompts, columns for the reward functions: {self.columns or 'none'}")
        if self.shortened:
            lines.append(f"shortened {self.shortened} prompt(s) to their last {self.max_prompt_length} tokens (max_prompt_length)")
        return lines


def prepare_prompts(
    rows,
    tokenizer,
    *,
    system_prompt: str | None = None,
    chat_template_kwargs: dict | None = None,
    max_prompt_length: int | None = None,
    tools: list | None = None,
) -> PreparedPrompts:
    """Validate prompt rows (string or message-list ``prompt`` plus any columns), turn string
    prompts into conversations when ``system_prompt`` is set, and tokenize them as generation
    will see them (chat template with the generation prompt for messages).

    ``tools`` (JSON schemas) are rendered into every prompt by the chat template; string prompts
    then become the user's message, since only the chat template can show the model its tools."""
    names = column_names(rows)
    data_format = formats.detect_format(names, first_row(rows))
    notes = []
    if data_format.name != formats.PROMPT_ONLY:
        # prompt-completion and preference data carry a prompt too: train on it, say so
        notes.append(f"the data is {data_format}; only its 'prompt' column is used")
    data_format = formats.DataFormat(formats.PROMPT_ONLY, data_format.conversational)
    formats.validate_rows(rows, data_format)
    as_user_message = bool(tools) and not system_prompt and not data_format.conversational
    if as_user_message:
        notes.append("string prompts are sent as the user's message, rendered with the tools by the chat template")
    if (system_prompt or as_user_message) and not data_format.conversational:
        data_format = formats.DataFormat(formats.PROMPT_ONLY, True)
    columns = [name for name in names if name not in OWN_FIELDS]
    items = []
    for index, row in enumerate(rows):
        prompt = row["prompt"]
        if system_prompt and isinstance(prompt, str):
            prompt = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
        elif as_user_message:
            prompt = [{"role": "user", "content": prompt}]
        items.append({"row": index, "prompt": prompt, "columns": {name: row.get(name) for name in columns}})
    shortened = 0
    for item, prompt_ids in zip(items, encode_prompts(tokenizer, [item["prompt"] for item in items], chat_template_kwargs or {}, tools)):
        if max_prompt_length and len(prompt_ids) > max_prompt_length:
            prompt_ids, shortened = prompt_ids[-max_prompt_length:], shortened + 1
        item["prompt_ids"] = prompt_ids
    return PreparedPrompts(items, data_format, columns, max_prompt_length, shortened, notes)
