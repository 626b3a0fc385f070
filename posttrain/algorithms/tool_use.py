"""Tools and environments in the online trainers' one rollout path (docs/design.md, "Online RL").

An online trainer given ``tools=[...]`` or ``environment_factory=`` (or the config's ``tools`` /
``environment_factory`` paths) holds a :class:`ToolUse`. Its :meth:`ToolUse.rollout` replaces the
single reply per prompt: the episodes of a generation batch run together, one batched model turn
per round (:func:`posttrain.rollout.agents.generate_episodes`), and each comes back as one
:class:`~posttrain.rollout.Completion` whose ``token_ids`` hold everything after the prompt and
whose ``generated`` flags mark the model's own tokens. From there every algorithm works as for
single replies: ``Experience.from_samples`` gives inserted tokens no loss, KL or advantage, the
score sits on the model's last sampled token, and the reward functions receive each episode's
messages (``completions``) and environment (``environments``).

Environments are built per episode and live only until the batch is scored: they are not part of
the experience that checkpoints save (they may hold sockets, processes or files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.rollout.agents import (
    EpisodePrompt,
    EpisodeStats,
    Tool,
    Toolbox,
    ToolCallParser,
    ToolOptions,
    episode_metrics,
    generate_episodes,
)
from posttrain.rollout.agents.tools import resolve_environment_factory, resolve_tools


@dataclass
class EpisodeBatch:
    """The episodes of one generation batch as the trainer uses them: ``completions`` (one
    :class:`~posttrain.rollout.Completion` each), the reward functions' ``messages`` and
    ``environments``, and batch ``metrics``."""

    completions: list
    messages: list[list[dict]]
    environments: list | None
    metrics: dict[str, float]


class ToolUse:
    """The tools of an online trainer (see the module docstring).

    Args:
        tools: callables, or ``'module:function'`` / ``'file.py:function'`` strings.
        environment_factory: a class or callable (or such a string) building one environment
            per episode, or None.
        tokenizer: its chat template must render tools and write calls in a known format
            (checked now, before any data is prepared).
        max_tool_calling_iterations, tool_timeout, chat_template_kwargs: see the config.
    """

    def __init__(self, tools, environment_factory, tokenizer, *, max_tool_calling_iterations: int, tool_timeout: float | None, chat_template_kwargs=None):
        described = [Tool.of(fn) for fn in resolve_tools(tools or [])]
        factory = resolve_environment_factory(environment_factory)
        ToolCallParser(tokenizer)  # a template without tool support fails here, naming the fix
        probe = Toolbox(described, factory() if factory is not None else None)  # one environment shows the tools every episode has
        self.schemas = probe.schemas
        self.has_environments = factory is not None
        self.options = ToolOptions(
            tools=tuple(described), environment_factory=factory, max_tool_calling_iterations=max_tool_calling_iterations,
            tool_timeout=tool_timeout, chat_template_kwargs=dict(chat_template_kwargs or {}),
        )

    @classmethod
    def from_config(cls, config, tokenizer, tools=None, environment_factory=None) -> ToolUse | None:
        """The trainer's tool use from its arguments, else its config; None when it has none."""
        tools = tools if tools is not None else config.tools
        environment_factory = environment_factory if environment_factory is not None else config.environment_factory
        if not tools and not environment_factory:
            return None
        return cls(
            tools, environment_factory, tokenizer, max_tool_calling_iterations=config.max_tool_calling_iterations,
            tool_timeout=config.tool_timeout, chat_template_kwargs=config.chat_template_kwargs,
        )

    def rollout(self, generate, tokenizer, items: Sequence[dict], options, num_generations: int) -> EpisodeBatch:
        """``num_generations`` episodes of each prompt item (contiguous), batched round by round;
        ``generate(prompt_ids, options, num_generations)`` is an engine's ``generate`` (or the
        trainer's ``sample_completions``)."""
        prompts = [EpisodePrompt(list(item["prompt"]), list(item["prompt_ids"]), item.get("columns", {})) for item in items]
        stats = EpisodeStats()
        episodes = generate_episodes(_Engine(generate), tokenizer, prompts, options, self.options, num_generations, stats)
        metrics = episode_metrics(episodes)
        metrics["time/tools"] = stats.tool_seconds
        return EpisodeBatch(
            completions=[e.as_completion() for e in episodes],
            messages=[e.messages for e in episodes],
            environments=[e.environment for e in episodes] if self.has_environments else None,
            metrics=metrics,
        )


class _Engine:
    """A ``generate`` function as the engine the multi-turn rollout calls once per round."""

    def __init__(self, generate):
        self.generate = generate
