"""Multi-turn rollouts with tools and environments (agents).

- :mod:`~posttrain.rollout.agents.tools`: tool schemas from callables, environments, :class:`Toolbox`.
- :mod:`~posttrain.rollout.agents.parsing`: the model's tool calls read in its chat template's format.
- :mod:`~posttrain.rollout.agents.execution`: running calls; failures become tool messages, counted by kind.
- :mod:`~posttrain.rollout.agents.episode`: one episode at the token level (sampled ids kept, the
  template's text inserted between turns, a per-token mask of what the model generated).
- :mod:`~posttrain.rollout.agents.multi_turn`: batched multi-turn generation over many episodes.
"""

from posttrain.rollout.agents.episode import Episode, encode_tool_prompt, inserted_text
from posttrain.rollout.agents.execution import ERROR_KINDS, ToolCall, ToolResult, run_tool_calls
from posttrain.rollout.agents.multi_turn import EpisodePrompt, EpisodeStats, ToolOptions, episode_metrics, generate_episodes
from posttrain.rollout.agents.parsing import ParsedTurn, ToolCallParser, response_schema
from posttrain.rollout.agents.tools import Tool, Toolbox, ToolError, build_toolbox, tool_schema

__all__ = [
    "ERROR_KINDS",
    "Episode",
    "EpisodePrompt",
    "EpisodeStats",
    "ParsedTurn",
    "Tool",
    "ToolCall",
    "ToolCallParser",
    "ToolError",
    "ToolOptions",
    "ToolResult",
    "Toolbox",
    "build_toolbox",
    "encode_tool_prompt",
    "episode_metrics",
    "generate_episodes",
    "inserted_text",
    "response_schema",
    "run_tool_calls",
    "tool_schema",
]
