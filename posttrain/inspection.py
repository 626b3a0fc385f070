"""``posttrain inspect``: load the tokenizer and rows a training config names and show them as
that config's trainer would prepare them (the renderers are :mod:`posttrain.data.inspect`; what
an algorithm's rows are comes from :mod:`posttrain.registry`)."""

from __future__ import annotations

from rich.console import Console

from posttrain.data.inspect import inspect_preference_rows, inspect_prompt_rows, inspect_rows, show_episode
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
        if getattr(config, "tools", None) or getattr(config, "environment_factory", None):
            return inspect_episodes(rows, tokenizer, config, start=start, count=count, console=console)
        return inspect_prompt_rows(rows, tokenizer, config, start=start, count=count, console=console)
    if kind == "lm":
        return inspect_rows(rows, tokenizer, config.data_options(), start=start, count=count, console=console)
    return inspect_preference_rows(
        rows, tokenizer, config.data_options(), paired=kind == "pairs", start=start, count=count, console=console
    )


def inspect_episodes(rows, tokenizer, config, *, start: int = 0, count: int = 3, console: Console | None = None):
    """For an online config with tools: the prompts rendered with the tools, then one greedy
    episode of the config's model per prompt, its sampled tokens (trained) and inserted tokens
    (tool results and template text: not trained) shown apart. Returns the episodes'
    examples."""
    from posttrain.algorithms.tool_use import ToolUse
    from posttrain.models.loading import load_causal_lm
    from posttrain.rollout import HFGenerationEngine, SamplingOptions

    console = console or Console(highlight=False)
    if config.model is None:
        raise ConfigError("inspect shows a greedy episode of the model for configs with tools: set the option 'model'")
    tool_use = ToolUse.from_config(config, tokenizer)
    items = inspect_prompt_rows(rows, tokenizer, config, start=start, count=count, console=console, tools=tool_use.schemas)
    console.print(f"[bold]greedy episodes of {config.model}[/] (tools: {', '.join(s['function']['name'] for s in tool_use.schemas)})")
    engine = HFGenerationEngine(load_causal_lm(config.model), tokenizer)
    options = SamplingOptions(max_completion_length=config.max_completion_length, do_sample=False)
    episodes = tool_use.rollout(engine.generate, tokenizer, items, options, 1)
    shown = []
    for offset, (item, completion) in enumerate(zip(items, episodes.completions)):
        title = f"episode of prompt {start + offset} ({completion.finish_reason})"
        shown.append(show_episode(console, tokenizer, title, item["prompt_ids"], completion.token_ids, completion.generated))
    return shown
