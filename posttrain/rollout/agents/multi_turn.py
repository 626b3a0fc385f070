"""Multi-turn rollouts: several episodes proceed together, one batched model turn per round.

Each round (:func:`generate_episodes`):

1. **one** ``engine.generate`` call continues every unfinished episode from its context (prompt
   plus everything so far): the model's turns are batched across episodes, never taken one
   episode at a time;
2. each turn is parsed for tool calls (:class:`~posttrain.rollout.agents.parsing.ToolCallParser`);
3. the calls of all episodes run (:func:`~posttrain.rollout.agents.execution.run_tool_calls`),
   failures becoming tool messages;
4. the tool messages and the template's text up to the next reply are appended as inserted tokens
   (:func:`~posttrain.rollout.agents.episode.inserted_text`).

An episode ends when a turn calls no tool (its answer), when the turn did not close with the
template's end-of-turn token (it ran out of length, or stopped on EOS or a stop string: there is
no well-formed turn to continue after), when its environment sets ``done``, when the token
budget is spent, or when a turn calls tools after ``max_tool_calling_iterations`` rounds of calls
have run (``hit_limit``; those calls are not run).

**Budget.** ``options.max_completion_length`` bounds the whole episode after the prompt, the
inserted tokens included, so an episode fits the same training sequence length as a single-turn
completion. Each round asks the engine for the largest remaining budget among its episodes and
cuts each turn to its own episode's budget (``"length"`` when cut). Inserted tokens that would
overflow the budget are cut too, and the episode ends with ``"length"``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from posttrain.data.prompts import end_of_turn_ids
from posttrain.rollout.agents.episode import Episode, encode_inserted, inserted_text
from posttrain.rollout.agents.execution import ERROR_KINDS, run_tool_calls
from posttrain.rollout.agents.parsing import ToolCallParser
from posttrain.rollout.agents.tools import Toolbox, build_toolbox
from posttrain.rollout.sampling import SamplingOptions


@dataclass(frozen=True)
class EpisodePrompt:
    """One prompt of a multi-turn rollout: its ``messages``, its ``prompt_ids`` (rendered with the
    tools' schemas: :func:`~posttrain.rollout.agents.episode.encode_tool_prompt`) and the row's
    other ``columns`` (given to the environment's ``reset``)."""

    messages: list[dict]
    prompt_ids: list[int]
    columns: Mapping = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ToolOptions:
    """How episodes use tools.

    Attributes:
        tools: callables (or :class:`~posttrain.rollout.agents.tools.Tool`), shared by every episode.
        environment_factory: builds one environment per episode (its public methods are tools), or None.
        max_tool_calling_iterations: rounds of tool calls an episode may run (>= 1); the turn after
            the last round is its answer.
        tool_timeout: seconds a call may take (None: no limit).
        chat_template_kwargs: extra variables for the chat template.
    """

    tools: tuple = ()
    environment_factory: Callable | None = None
    max_tool_calling_iterations: int = 5
    tool_timeout: float | None = None
    chat_template_kwargs: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "tools", tuple(self.tools or ()))
        count = self.max_tool_calling_iterations
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"max_tool_calling_iterations must be an integer >= 1, got {count!r}")
        if self.tool_timeout is not None and not (isinstance(self.tool_timeout, (int, float)) and self.tool_timeout > 0):
            raise ValueError(f"tool_timeout must be a number of seconds > 0 or None, got {self.tool_timeout!r}")
        if not self.tools and self.environment_factory is None:
            raise ValueError("multi-turn rollouts need tools=[...] or an environment_factory")


@dataclass
class EpisodeStats:
    """Time and work of one :func:`generate_episodes` call."""

    rounds: int = 0
    generated_tokens: int = 0
    inserted_tokens: int = 0
    generation_seconds: float = 0.0
    tool_seconds: float = 0.0


def _closed_turn(ids: list[int], end_ids: set[int]) -> bool:
    return bool(ids) and ids[-1] in end_ids


class _Round:
    """The bookkeeping of one round over the unfinished episodes."""

    def __init__(self, episodes: list[Episode], toolboxes: list[Toolbox], budget: int):
        self.episodes, self.toolboxes, self.budget = episodes, toolboxes, budget
        self.calls: dict[int, list] = {}  # episode index -> the calls of its latest turn

    def remaining(self, episode: Episode) -> int:
        return self.budget - len(episode.token_ids)


def generate_episodes(
    engine,
    tokenizer,
    prompts: Sequence[EpisodePrompt],
    options: SamplingOptions,
    tool_options: ToolOptions,
    num_generations: int = 1,
    stats: EpisodeStats | None = None,
) -> list[Episode]:
    """``len(prompts) * num_generations`` episodes, those of prompt ``i`` at ``[i * G, (i + 1) * G)``
    (see the module docstring). ``engine`` is any :class:`~posttrain.rollout.engine.RolloutEngine`;
    ``stats``, when given, is filled in."""
    stats = stats if stats is not None else EpisodeStats()
    parser = ToolCallParser(tokenizer)
    end_ids = set(end_of_turn_ids(tokenizer))
    if not end_ids:
        raise ValueError("multi-turn rollouts need a chat template that closes turns with a special token")
    options = dataclasses.replace(options, stop_token_ids=tuple(dict.fromkeys([*options.stop_token_ids, *sorted(end_ids)])))
    episodes, toolboxes = [], []
    for prompt in prompts:
        for _ in range(num_generations):
            toolbox = build_toolbox(tool_options.tools, tool_options.environment_factory, prompt.columns)
            toolboxes.append(toolbox)
            episodes.append(Episode(list(prompt.prompt_ids), list(prompt.messages), environment=toolbox.environment))
    state = _Round(episodes, toolboxes, options.max_completion_length)
    active = list(range(len(episodes)))
    for round_index in range(tool_options.max_tool_calling_iterations + 1):
        if not active:
            break
        calling = _model_turns(engine, parser, options, state, active, end_ids, stats)
        last_round = round_index == tool_options.max_tool_calling_iterations
        for index in calling if last_round else ():
            episodes[index].hit_limit = True
            episodes[index].finish()
        active = [] if last_round else _tool_round(tokenizer, tool_options, state, calling, stats)
    for episode in episodes:
        episode.finish()
    return episodes


def _model_turns(engine, parser, options, state: _Round, active: list[int], end_ids, stats: EpisodeStats) -> list[int]:
    """One batched model turn for the ``active`` episodes; returns those whose turn called tools
    (parsed calls are stashed on ``state.calls``)."""
    episodes = state.episodes
    budgets = [state.remaining(episodes[i]) for i in active]
    started = time.perf_counter()
    completions = engine.generate(
        [episodes[i].context_ids() for i in active], dataclasses.replace(options, max_completion_length=max(budgets)), 1
    )
    stats.generation_seconds += time.perf_counter() - started
    stats.rounds += 1
    calling, state.calls = [], {}
    for index, completion, budget in zip(active, completions, budgets):
        episode = episodes[index]
        ids = list(completion.token_ids)
        reason = completion.finish_reason if len(ids) <= budget else "length"
        ids = ids[:budget]
        parsed = parser.parse(ids, episode.context_ids())
        episode.add_model_turn(ids, parsed.message, reason, parser.tokenizer.decode(ids, skip_special_tokens=True))
        stats.generated_tokens += len(ids)
        if not parsed.calls or reason == "length" or not _closed_turn(ids, end_ids):
            episode.finish()
            continue
        state.calls[index] = parsed.calls
        calling.append(index)
    return calling


def _tool_round(tokenizer, tool_options: ToolOptions, state: _Round, calling: list[int], stats: EpisodeStats) -> list[int]:
    """Run the calls of the ``calling`` episodes and append their results; returns the episodes
    that go on to another model turn."""
    started = time.perf_counter()
    results = run_tool_calls([(state.toolboxes[i], state.calls[i]) for i in calling], tool_options.tool_timeout)
    stats.tool_seconds += time.perf_counter() - started
    going_on = []
    for index, outcome in zip(calling, results):
        episode, toolbox = state.episodes[index], state.toolboxes[index]
        episode.tool_calls += len(outcome)
        episode.tool_errors.update(result.error for result in outcome if result.error is not None)
        messages = [result.message() for result in outcome]
        text = inserted_text(
            tokenizer, [*episode.prompt_messages, *episode.messages], messages,
            tools=toolbox.schemas, chat_template_kwargs=tool_options.chat_template_kwargs,
        )
        ids = encode_inserted(tokenizer, text)
        room = state.remaining(episode)
        episode.add_inserted(ids[:room], messages)
        stats.inserted_tokens += min(len(ids), room)
        if len(ids) >= room:
            episode.finish("length")
        elif toolbox.done:
            episode.finish()
        else:
            going_on.append(index)
    return going_on


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Per-batch figures: model turns and tool calls per episode (``tools/turns``,
    ``tools/call_frequency``), the share of calls that failed (``tools/failure_frequency``), the
    number of failed calls of each kind (``tools/errors/<kind>``) and the share of episodes that
    hit ``max_tool_calling_iterations`` (``tools/hit_limit_ratio``)."""
    count = max(len(episodes), 1)
    calls = sum(e.tool_calls for e in episodes)
    errors = Counter()
    for episode in episodes:
        errors.update(episode.tool_errors)
    metrics = {
        "tools/turns": sum(e.turns for e in episodes) / count,
        "tools/call_frequency": calls / count,
        "tools/failure_frequency": sum(errors.values()) / calls if calls else 0.0,
        "tools/hit_limit_ratio": sum(e.hit_limit for e in episodes) / count,
    }
    metrics.update({f"tools/errors/{kind}": float(errors[kind]) for kind in ERROR_KINDS})
    return metrics
