"""See exactly which tokens are trained on: ``posttrain inspect`` and :func:`inspect_rows`.

Each token is printed as the text it decodes to, styled by its loss weight: dim when it gets no
loss, green when it does (yellow, with the weight, when the weight is not 1). Special tokens
(EOS, end-of-turn, BOS, pad) are shown by name in magenta and line breaks as ``\\n``, so an
EOS that is missing or masked is obvious.
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
    legend = Text()
    legend.append("trained", style=TRAINED).append("  ").append("weighted", style=WEIGHTED).append("  ")
    legend.append("not trained", style=UNTRAINED).append("  ").append("special token", style=SPECIAL)
    console.print(legend)
    for line in prepared.report.lines():
        console.print(f"  {line}")
    shown = []
    for index in range(start, min(start + count, len(prepared.examples))):
        example = prepared.examples[index]
        trained = sum(1 for w in example["loss_weights"] if w)
        console.rule(f"example {index} (row {example['row']}): {len(example['input_ids'])} tokens, {trained} trained")
        console.print(render_example(tokenizer, example))
        shown.append(example)
    return shown


def inspect_config(config, *, split: str = "train", start: int = 0, count: int = 3, console: Console | None = None):
    """``posttrain inspect``: load the tokenizer and data a training config names and show them."""
    from posttrain.data.loading import load_rows
    from posttrain.models.loading import load_tokenizer, set_chat_template

    tokenizer = load_tokenizer(config.tokenizer, config.model)
    set_chat_template(tokenizer, getattr(config, "chat_template", None))
    source = config.train_data if split == "train" else config.eval_data
    rows = load_rows(source, f"{split}_data")
    return inspect_rows(rows, tokenizer, config.data_options(), start=start, count=count, console=console)
