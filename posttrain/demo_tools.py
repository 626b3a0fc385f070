"""``posttrain demo --algorithm tools`` (``tools-ppo``): online RL with a tool the model needs (issue 18).

The task is two-digit multiplication (``posttrain.tasks.tool_use``): the demo's tiny model cannot
multiply in its head, but it can call ``multiply`` with the question's numbers and copy the
result. The recipe:

1. **A base that can copy**: the demo's randomly initialised model (the ``llama-demo`` fixture)
   first learns to repeat a number from a sentence (:func:`~posttrain.tasks.tool_use.copy_demonstrations`,
   :data:`TOOLS_COPY_STEPS` short steps), then from a tool message in the chat template's format
   (:func:`~posttrain.tasks.tool_use.result_copy_demonstrations`, :data:`TOOLS_RESULT_COPY_STEPS`),
   standing in for what a pretrained model brings. Numbers to copy have three or four digits
   equally often (products have both). Each stage runs in rounds of fresh rows until greedy
   copies of 64 freshly drawn numbers are :data:`TOOLS_COPY_TARGET` right (at most
   :data:`TOOLS_COPY_MAX_ROUNDS` rounds), because when copying forms differs from seed to seed.
   From the raw fixture, ~10k tool-use demonstrations taught the format but not the copying (it
   called ``multiply`` with constant numbers).
2. **The start**: SFT (the ``tools`` chat template of :mod:`posttrain.testing`) on
   demonstrations of which :data:`TOOLS_DIRECT_RATE` answer directly and the rest call the tool,
   read its result and answer, with :data:`TOOLS_RESULT_COPY_SHARE` of the rows repeating a
   random tool result instead (:func:`~posttrain.tasks.tool_use.with_result_copies`): without
   them, answering directly (guessing a product from the question) wore away the copying, and
   the start miscopied most three-digit results. Even with them the start's copying differed from
   seed to seed (greedy episodes repeated 0% to 100% of held-out products), and GRPO does not
   repair copying, so the SFT goes on in rounds of :data:`TOOLS_START_REPAIR_STEPS` fresh steps
   until greedy episodes repeat :data:`TOOLS_START_COPY_TARGET` of the tool's results
   (:func:`~posttrain.tasks.tool_use.copy_accuracy`, ``"episode"``). The model calls the tool in
   about :data:`TOOLS_DIRECT_RATE` of its sampled episodes; its direct answers are wrong.
3. **GRPO** (or PPO) with ``tools=[multiply]``, rewarded 1 for the exact answer: episodes that
   call the tool are right more often, so the policy learns to call it.

Accuracy is measured on held-out problems with sampled episodes (temperature 1,
:data:`TOOLS_EVAL_SAMPLES` per problem, a fixed seed): greedy decoding would hide the policy's
mix of calling and not calling, since one token (``<`` of ``<tool_call>``) decides it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from posttrain import registry
from posttrain.demo import DEMO_FIXTURE, DEMO_SEED, shares_table

# The copying stages: steps of TOOLS_COPY_BATCH short rows, copying from a sentence, then from a
# tool message.
TOOLS_COPY_STEPS = 120
TOOLS_RESULT_COPY_STEPS = 100
TOOLS_COPY_BATCH = 128
# Each copying stage repeats (fresh rows, from where it stopped) until greedy copies of 64 freshly
# drawn numbers are TOOLS_COPY_TARGET right, at most TOOLS_COPY_MAX_ROUNDS times: when the copying forms
# differs from seed to seed (after 120 steps one seed copied 59% of the numbers, another 100%).
TOOLS_COPY_TARGET = 0.95
TOOLS_COPY_MAX_ROUNDS = 4
# The start: SFT steps of TOOLS_SFT_BATCH rows, over that many distinct demonstrations (one pass).
TOOLS_SFT_STEPS = 400
TOOLS_SFT_BATCH = 32
TOOLS_DIRECT_RATE = 0.5
# Share of the start's SFT rows that repeat a random tool result instead of a demonstration. Half
# did worse (seed 2: the start repeated 3-22% of right tool results, GRPO gained 13.75 points).
TOOLS_RESULT_COPY_SHARE = 1 / 3
TOOLS_SFT_LEARNING_RATE = 3e-3
# The start's SFT goes on in rounds of TOOLS_START_REPAIR_STEPS fresh steps while its greedy answers,
# after a right call of multiply on a held-out question, repeat fewer than TOOLS_START_COPY_TARGET
# of the products the tool returned (copy_accuracy "episode"), at most TOOLS_START_MAX_ROUNDS
# rounds in all: the start's copying caps what GRPO reaches (GRPO does not repair copying), and
# the SFT wore it away in some seeds.
TOOLS_START_COPY_TARGET = 0.9
TOOLS_START_REPAIR_STEPS = 100
TOOLS_START_MAX_ROUNDS = 3
# The online stage: GRPO's optimizer steps take 8 prompts x 8 episodes; PPO's rollout batches of 64
# episodes take 4 (2 epochs x 2 mini-batches), so 120 of them see as many episodes as GRPO's 30.
TOOLS_STEPS = {"grpo": 30, "ppo": 120}
# PPO's settings beyond the arithmetic demo's: Monte Carlo returns (lam 1; the reward comes once,
# at the end of an episode of up to 96 tokens, and the decision to call the tool is its first
# token) and a lower learning rate (with the demo's settings, 60 steps, seed 1's right arguments fell from
# 94% to 81% and its three-digit copying from 81% to 59%). Seed 0 at 1 thread: +21
# points with the demo's settings and 60 steps, +29.75 with 120, +31 with lam 1, +34.5 with both
# and lr 2e-4 (seed 1: +12.75 -> +37.75).
TOOLS_PPO_SETTINGS = {"learning_rate": 2e-4, "lam": 1.0}
TOOLS_MAX_COMPLETION_LENGTH = 96
# Held-out evaluation: problems and sampled episodes per problem.
TOOLS_EVAL_ROWS = 100
TOOLS_EVAL_SAMPLES = 4
# What the demo promises (GRPO and PPO alike): the rise of held-out accuracy, issue 18's +30 points.
# Measured (benchmarks/learning_sweep.py --algorithms tools tools_ppo; README, "Measured results"):
# GRPO +35.75 to +47.25 points over training seeds 0-4 at 1 thread and seeds 0, 1, 4 at 2, but with 2
# threads +14 at seed 2 (its start called multiply with wrong numbers in 70% of episodes) and +0.25 at
# seed 3 (its start copied no tool result); PPO +34.5 to +47.5 over seeds 0-4 at 1 thread and 0, 1 at 2.
TOOLS_PROMISE_GAIN = 0.3


def tools_sft_config(output_dir: str, steps: int | None = None, **overrides):
    """The SFTConfig of the tool-use start (the SFT demo's optimiser settings)."""
    from posttrain.demo import demo_config
    from posttrain.testing import TOOLS_TEMPLATE

    values = dict(
        per_device_train_batch_size=TOOLS_SFT_BATCH, max_length=256, chat_template=TOOLS_TEMPLATE, loss_mode="assistant",
        learning_rate=TOOLS_SFT_LEARNING_RATE, logging_steps=50,
    )
    values.update(overrides)
    return demo_config(output_dir, steps or TOOLS_SFT_STEPS, **values)


def tools_online_config(algorithm: str, output_dir: str, steps: int | None = None, **overrides):
    """The GRPOConfig / PPOConfig of the tool stage: the online demos' settings, episodes of at
    most :data:`TOOLS_MAX_COMPLETION_LENGTH` tokens and two rounds of tool calls (PPO: with
    :data:`TOOLS_PPO_SETTINGS`)."""
    from posttrain.demo import online_config
    from posttrain.testing import TOOLS_TEMPLATE

    values = dict(
        max_completion_length=TOOLS_MAX_COMPLETION_LENGTH, chat_template=TOOLS_TEMPLATE, max_tool_calling_iterations=2,
        log_completions_steps=10, num_completions_to_print=2, **(TOOLS_PPO_SETTINGS if algorithm == "ppo" else {}),
    )
    values.update(overrides)
    return online_config(algorithm, output_dir, steps or TOOLS_STEPS[algorithm], **values)


def evaluate_tool_use(model, tokenizer):
    """Held-out accuracy and tool use of sampled episodes (see the module docstring)."""
    from posttrain.tasks.tool_use import tool_prompts, tool_task, tool_use_accuracy

    rows = tool_prompts(tool_task(), "test", TOOLS_EVAL_ROWS)
    return tool_use_accuracy(model, tokenizer, rows, max_new_tokens=TOOLS_MAX_COMPLETION_LENGTH, samples=TOOLS_EVAL_SAMPLES)


def evaluate_saved(path: str):
    """:func:`evaluate_tool_use` of the model saved at ``path`` (a tool-use start)."""
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.testing import TOOLS_TEMPLATE

    tokenizer = load_tokenizer(path)
    tokenizer.chat_template = TOOLS_TEMPLATE
    return evaluate_tool_use(load_causal_lm(path), tokenizer)


def copying_base(output_dir: str, seed: int = DEMO_SEED, steps: int | None = None, **overrides) -> tuple[str, dict[str, list[float]]]:
    """The demo fixture trained to repeat a number from a sentence, then from a tool message, each
    stage in rounds until it copies (:data:`TOOLS_COPY_TARGET`); returns the saved path and each
    stage's copy accuracy after every round. ``steps`` caps the steps of a round and allows one."""
    from posttrain.demo import demo_config
    from posttrain.tasks.tool_use import copy_demonstrations, result_copy_demonstrations
    from posttrain.testing import fixture_path

    settings = {**overrides, "save_final_model": True, "per_device_train_batch_size": TOOLS_COPY_BATCH}
    stages = (
        ("sentence", demo_config, _capped(TOOLS_COPY_STEPS, steps), copy_demonstrations),
        ("tool_result", tools_sft_config, _capped(TOOLS_RESULT_COPY_STEPS, steps), result_copy_demonstrations),
    )
    path, accuracies = str(fixture_path(DEMO_FIXTURE)), {}
    for kind, make_config, stage_steps, make_rows in stages:
        accuracies[kind] = []
        for round_index in range(1 if steps is not None else TOOLS_COPY_MAX_ROUNDS):
            round_seed = seed + 1000 * round_index  # fresh rows (and data order) each round
            config = make_config(str(Path(output_dir) / f"{kind}-{round_index}"), stage_steps, seed=round_seed, **settings)
            path, accuracy = _copying_round(path, config, make_rows(stage_steps * TOOLS_COPY_BATCH, round_seed), kind)
            accuracies[kind].append(accuracy)
            if accuracy >= TOOLS_COPY_TARGET:
                break
    return path, accuracies


def _copying_round(path: str, config, rows: list[dict], kind: str) -> tuple[str, float]:
    from posttrain.algorithms.sft import SFTTrainer
    from posttrain.tasks.tool_use import copy_accuracy

    trainer = SFTTrainer(path, config, train_dataset=rows)
    trainer.train()
    return str(Path(config.output_dir) / "final"), copy_accuracy(trainer.model, trainer.tokenizer, kind)


def _capped(default: int, cap: int | None) -> int:
    return default if cap is None else min(default, cap)


def tool_start(output_dir: str, seed: int = DEMO_SEED, steps: int | None = None, **overrides):
    """The copying base, then SFT on tool-use demonstrations (a :data:`TOOLS_RESULT_COPY_SHARE`
    of the rows repeating a tool result instead), continued in shorter rounds of fresh rows
    until greedy episodes repeat :data:`TOOLS_START_COPY_TARGET` of the tool's results.
    Returns the saved model's path, its :class:`~posttrain.tasks.tool_use.ToolEvalResult`, and
    each copying stage's accuracy after every round (:func:`copying_base`, and ``"episode"``:
    the start's). ``steps`` caps every stage and allows one round."""
    from posttrain.tasks.tool_use import tool_demonstrations, tool_task, with_result_copies

    path, copy_rounds = copying_base(str(Path(output_dir) / "copy"), seed, steps, **overrides)
    copy_rounds["episode"] = []
    for round_index in range(1 if steps is not None else TOOLS_START_MAX_ROUNDS):
        round_seed = seed + 1000 * round_index  # fresh rows and order each round; round 0 as before
        round_steps = steps or (TOOLS_SFT_STEPS if round_index == 0 else TOOLS_START_REPAIR_STEPS)
        round_dir = output_dir if round_index == 0 else str(Path(output_dir) / f"repair-{round_index}")
        config = tools_sft_config(round_dir, round_steps, seed=round_seed, **{**overrides, "save_final_model": True})
        demonstrations = tool_demonstrations(tool_task(round_index), "train", config.max_steps * config.per_device_train_batch_size, TOOLS_DIRECT_RATE)
        rows = with_result_copies(demonstrations, TOOLS_RESULT_COPY_SHARE, round_seed)
        path, accuracy = _copying_round(path, config, rows, "episode")
        copy_rounds["episode"].append(accuracy)
        if accuracy >= TOOLS_START_COPY_TARGET:
            break
    return path, evaluate_saved(path), copy_rounds


def tool_stage(algorithm: str, start_path: str, output_dir: str, steps: int | None = None, seed: int = DEMO_SEED, **overrides):
    """GRPO or PPO with ``tools=[multiply]`` from ``start_path``, rewarded by the exact answer;
    returns ``(trainer, held-out ToolEvalResult)``."""
    from posttrain.rollout import exact_answer
    from posttrain.tasks.tool_use import multiply, tool_prompts, tool_task

    if algorithm not in TOOLS_STEPS:
        raise ValueError(f"algorithm must be one of {tuple(TOOLS_STEPS)}, got {algorithm!r}")
    trainer_class, _ = registry.algorithm(algorithm).classes()
    config = tools_online_config(algorithm, output_dir, steps, seed=seed, **overrides)
    rows = tool_prompts(tool_task(), "train")
    trainer = trainer_class(start_path, config, train_dataset=rows, reward_funcs=[exact_answer()], tools=[multiply])
    trainer.train()
    return trainer, evaluate_tool_use(trainer.model, trainer.tokenizer)


def _table(stages: list[tuple[str, object]]) -> Table:
    title = f"held-out multiplication, {TOOLS_EVAL_ROWS} problems x {TOOLS_EVAL_SAMPLES} sampled episodes"
    figures = [(name, (result.accuracy, result.tool_use)) for name, result in stages]
    return shares_table(title, ("accuracy", "episodes calling multiply"), figures)


def run_tools_demo(
    output_dir: str = "outputs/demo-tools", steps: int | None = None, console: Console | None = None, seed: int = DEMO_SEED,
    algorithm: str = "grpo", **overrides,
) -> dict:
    """:func:`tool_start`, then :func:`tool_stage`; prints accuracy and tool use after each, an
    episode, and the verdict. ``steps`` (a quick look) caps both stages and voids the promise.
    Returns ``accuracy_start``, ``accuracy_after``, ``tool_use_start``, ``tool_use_after``, ``learned``."""
    console = console or Console(highlight=False)
    console.rule(f"[bold]posttrain demo: SFT on tool-use demonstrations, then {algorithm.upper()} with a multiply tool")
    start_steps = None if steps is None else min(steps, TOOLS_SFT_STEPS)
    console.print(
        f"SFT: {TOOLS_COPY_STEPS} + {TOOLS_RESULT_COPY_STEPS} steps repeating numbers from a sentence and from a tool message, "
        f"each repeated until it copies {TOOLS_COPY_TARGET:.0%} (a base that can copy), then {start_steps or TOOLS_SFT_STEPS} "
        f"steps on tool-use demonstrations, {TOOLS_DIRECT_RATE:.0%} answering without the tool, {TOOLS_RESULT_COPY_SHARE:.0%} "
        f"of the rows repeating a tool result, continued {TOOLS_START_REPAIR_STEPS} steps at a time until its episodes copy "
        f"{TOOLS_START_COPY_TARGET:.0%} of tool results (episode)"
    )
    start_path, start, copy_rounds = tool_start(str(Path(output_dir) / "sft"), seed, start_steps, **overrides)
    rounds = "; ".join(f"{kind}: " + " -> ".join(f"{accuracy:.0%}" for accuracy in accuracies) for kind, accuracies in copy_rounds.items())
    console.print(f"copying after each round ({rounds})", markup=False)
    stage_steps = None if steps is None else min(steps, TOOLS_STEPS[algorithm])
    console.print(f"{algorithm.upper()}: tools=[multiply], reward 1 for the exact answer", markup=False)
    trainer, after = tool_stage(algorithm, start_path, str(Path(output_dir) / algorithm), stage_steps, seed, **overrides)
    question, messages, answer = after.samples[0]
    console.print(f"an episode after {algorithm.upper()} ({question}, answer {answer}):")
    for message in messages:
        calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls", [])]
        console.print(f"  {message['role']}: {message.get('content') or ''}{' calls ' + ', '.join(calls) if calls else ''}", markup=False)
    console.print(_table([("after SFT", start), (f"after {algorithm.upper()}", after)]))
    gain = after.accuracy - start.accuracy
    learned = gain >= TOOLS_PROMISE_GAIN and after.tool_use > start.tool_use
    if steps is not None:
        console.print(f"[yellow]The step count was changed, so the recipe's promise (+{TOOLS_PROMISE_GAIN:.0%}) does not apply.[/]")
        learned = True
    elif learned:
        console.print(f"[green]{algorithm.upper()} learned to use the tool: held-out accuracy {gain:+.1%} (the recipe promises >= +{TOOLS_PROMISE_GAIN:.0%}).[/]")
    else:
        console.print(
            f"[bold red]This run did not learn: held-out accuracy {gain:+.1%} (tool use {start.tool_use:.0%} -> {after.tool_use:.0%}), "
            f"below the +{TOOLS_PROMISE_GAIN:.0%} this recipe reached in 8 of 10 GRPO and 7 of 7 PPO runs we measured (issue 18). Please report it "
            f"with the output of `python benchmarks/learning_sweep.py --algorithms {'tools' if algorithm == 'grpo' else 'tools_ppo'}`.[/]"
        )
    return {
        "accuracy_start": start.accuracy, "accuracy_after": after.accuracy, "tool_use_start": start.tool_use,
        "tool_use_after": after.tool_use, "learned": learned,
    }
