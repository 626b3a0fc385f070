"""``posttrain inspect``: load the tokenizer and rows a training config names and show them as
that config's trainer would prepare them (the renderers are :mod:`posttrain.data.inspect`; what
an algorithm's rows are comes from :mod:`posttrain.registry`)."""

from __future__ import annotations

from rich.console import Console

from posttrain.data.inspect import inspect_preference_rows, inspect_prompt_rows, inspect_rows
from posttrain.data.loading import load_rows, split_rows
from posttrain.errors import ConfigError
from posttrain.models.loading import load_tokenizer, set_chat_template
from posttrain.registry import algorithm


def inspect_config(config, algorithm_name: str, *, split: str = "train", start: int = 0, count: int = 3, console: Console | None = None):
    """Show ``count`` rows of ``split`` from ``start`` as ``algorithm_name``'s trainer prepares
    them (SFT rows, preference pairs, unpaired rows or prompts); returns what was shown."""
    kind = algorithm(algorithm_name).data
    if config.model is None and config.tokenizer is None:
        raise ConfigError("inspect needs the tokenizer: set the option 'model' (or 'tokenizer') in the config")
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    set_chat_template(tokenizer, getattr(config, "chat_template", None))
    if split == "eval" and config.eval_data is None and config.eval_fraction > 0:
        # the rows the trainer would hold out (same fraction, same seed)
        rows = split_rows(load_rows(config.train_data, "train_data"), config.eval_fraction, config.seed)[1]
    else:
        source = config.train_data if split == "train" else config.eval_data
        if source is None:
            raise ConfigError(f"the config names no {split}_data to inspect (nor an eval_fraction); set {split}_data")
        rows = load_rows(source, f"{split}_data")
    if kind == "prompts":
        return inspect_prompt_rows(rows, tokenizer, config, start=start, count=count, console=console)
    if kind == "lm":
        return inspect_rows(rows, tokenizer, config.data_options(), start=start, count=count, console=console)
    return inspect_preference_rows(
        rows, tokenizer, config.data_options(), paired=kind == "pairs", start=start, count=count, console=console
    )
