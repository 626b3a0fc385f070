"""See exactly which tokens are trained on: ``posttrain inspect`` and :func:`inspect_rows`.

Each token is printed as the text it decodes to, styled by its loss weight: dim when it gets no
loss, green when it does (yellow, with the weight, when the weight is not 1). Special tokens
(EOS, end-of-turn, BOS, pad) are shown by name in magenta and line breaks as ``\\n``, so an
EOS that is missing or masked is obvious. Without colour (output piped or saved to a file,
``NO_COLOR``) trained tokens are marked ``[[ ]]`` instead, weighted ones ``[[0.5: ]]``.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LMDataOptions

TRAINED = "bold green"
WEIGHTED = "bold yellow"
UNTRAINED = "dim"
SPECIAL = "magenta"


def token_pieces(tokenizer, input_ids: list[int]) -> list[tuple[str, bool]]:
    """``(display text, is_special)`` per token; whitespace made visible."""
    special_ids = set(tokenizer.all_special_ids)
    pieces = []
    for token_id in input_ids:
        if token_id in special_ids:
            pieces.append((tokenizer.convert_ids_to_tokens(token_id), True))
        else:
            text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            pieces.append((text.replace("\n", "\\n\n").replace("\t", "\\t"), False))
    return pieces


def render_example(tokenizer, example: dict) -> Text:
    """A Rich ``Text`` of one tokenized example, coloured by loss weight."""
    out = Text()
    for (piece, special), weight in zip(token_pieces(tokenizer, example["input_ids"]), example["loss_weights"]):
        style = UNTRAINED if weight == 0 else (TRAINED if weight == 1 else WEIGHTED)
        if special:
            style = f"{style} {SPECIAL}" if weight else f"{UNTRAINED} {SPECIAL}"
        out.append(piece, style=style)
        if weight not in (0, 1):
            out.append(f"[{weight:g}]", style="yellow")
    return out


def render_plain(tokenizer, example: dict) -> str:
    """Plain-text rendering: trained tokens inside ``[[ ]]`` (weight shown when not 1)."""
    parts, inside = [], None
    for (piece, _), weight in zip(token_pieces(tokenizer, example["input_ids"]), example["loss_weights"]):
        if weight != inside:
            if inside:
                parts.append("]]")
            if weight:
                parts.append("[[" if weight == 1 else f"[[{weight:g}:")
            inside = weight
        parts.append(piece)
    if inside:
        parts.append("]]")
    return "".join(parts)


def inspect_rows(rows, tokenizer, options: LMDataOptions, *, start: int = 0, count: int = 3, console: Console | None = None):
    """Print ``count`` prepared examples starting at example ``start``, with a legend and the
    preparation report. Returns the examples shown."""
    console = console or Console(highlight=False)
    prepared = prepare_lm_data(rows, tokenizer, options, desc="tokenizing for inspect")
    console.print(f"[bold]format[/] {prepared.data_format}   [bold]loss_mode[/] {prepared.loss_mode}")
    console.print(_legend(console))
    for line in prepared.report.lines():
        console.print(f"  {line}")
    shown = []
    for index in range(start, min(start + count, len(prepared.examples))):
        example = prepared.examples[index]
        _show(console, tokenizer, f"example {index} (row {example['row']})", example)
        shown.append(example)
    return shown


def _legend(console: Console) -> Text:
    if console.color_system is None:
        return Text("[[trained]]  [[0.5:weighted by 0.5]]  not trained  <special tokens by name>")
    legend = Text()
    legend.append("trained", style=TRAINED).append("  ").append("weighted", style=WEIGHTED).append("  ")
    legend.append("not trained", style=UNTRAINED).append("  ").append("special token", style=SPECIAL)
    return legend


def _show(console: Console, tokenizer, title: str, example: dict) -> None:
    trained = sum(1 for w in example["loss_weights"] if w)
    console.rule(f"{title}: {len(example['input_ids'])} tokens, {trained} trained")
    if console.color_system is None:  # no colour to tell trained from untrained: mark them
        console.print(render_plain(tokenizer, example), markup=False, highlight=False)
    else:
        console.print(render_example(tokenizer, example))


def inspect_preference_rows(rows, tokenizer, options: LMDataOptions, *, paired: bool = True, start: int = 0, count: int = 3, console: Console | None = None):
    """Like :func:`inspect_rows` for preference pairs (``paired=True``: chosen then rejected) or
    unpaired KTO rows (with their label). The trained tokens are each side's completion, whose
    log-probs DPO and KTO compare; a reward model reads its score at the last token. Returns the
    items shown."""
    from posttrain.data.preference import prepare_preference_pairs, prepare_unpaired

    console = console or Console(highlight=False)
    prepared = (prepare_preference_pairs if paired else prepare_unpaired)(rows, tokenizer, options)
    console.print(f"[bold]format[/] {prepared.data_format}")
    console.print(_legend(console))
    for line in prepared.lines():
        console.print(f"  {line}")
    shown = prepared.items[start : start + count]
    for offset, item in enumerate(shown):
        index = start + offset
        if paired:
            margin = "" if item["margin"] is None else f", margin {item['margin']:g}"
            _show(console, tokenizer, f"pair {index} (row {item['row']}{margin}) chosen", item["chosen"])
            _show(console, tokenizer, f"pair {index} (row {item['row']}) rejected", item["rejected"])
        else:
            label = "desirable" if item["label"] else "undesirable"
            _show(console, tokenizer, f"example {index} (row {item['row']}, {label})", item["example"])
    return shown


def inspect_prompt_rows(rows, tokenizer, config, *, start: int = 0, count: int = 3, console: Console | None = None, tools=None):
    """Like :func:`inspect_rows` for the prompt-only rows of GRPO and PPO (``config`` an
    OnlineConfig): each prompt's tokens exactly as the policy is prompted (system prompt, chat
    template with the generation prompt and the ``tools``' schemas, ``max_prompt_length``), and
    the columns its reward functions receive. No token of a prompt gets loss: the loss is on the
    sampled completions. Returns the items shown."""
    from posttrain.data.prompt_only import prepare_prompts

    console = console or Console(highlight=False)
    prepared = prepare_prompts(
        rows, tokenizer, system_prompt=config.system_prompt, chat_template_kwargs=config.chat_template_kwargs,
        max_prompt_length=config.max_prompt_length, tools=tools,
    )
    console.print(f"[bold]format[/] {prepared.data_format}")
    console.print(_legend(console))
    for line in prepared.lines():
        console.print(f"  {line}")
    shown = prepared.items[start : start + count]
    for offset, item in enumerate(shown):
        ids = item["prompt_ids"]
        _show(console, tokenizer, f"prompt {start + offset} (row {item['row']})", {"input_ids": ids, "loss_weights": [0.0] * len(ids)})
        for name, value in item["columns"].items():
            console.print(f"  [bold]{name}[/] = {value!r:.300}")
    return shown


def show_episode(console: Console, tokenizer, title: str, prompt_ids: list[int], token_ids: list[int], generated) -> dict:
    """Print one multi-turn episode: the prompt and the inserted tokens (tool results, template
    text) untrained, the tokens the model sampled trained. Returns the example shown."""
    example = {"input_ids": list(prompt_ids) + list(token_ids), "loss_weights": [0.0] * len(prompt_ids) + [1.0 if g else 0.0 for g in generated]}
    _show(console, tokenizer, title, example)
    return example
