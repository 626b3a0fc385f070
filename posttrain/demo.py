"""``posttrain demo`` / ``make demo``: the embedded default run.

SFT of a tiny randomly initialised Llama (~1M parameters, built offline by
``posttrain.testing``) on the built-in arithmetic task, then greedy exact-match accuracy on
held-out problems before and after, with a table of sample generations. Runs on a laptop CPU
in about a minute; the learning tests use the same recipe.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

# The recipe, tuned on a 2-core CPU: 8000 rows x 6 epochs at batch 32 = 1500 steps reaches
# ~99% held-out accuracy (from 0%) in about a minute.
DEMO_ROWS = 8000
DEMO_EPOCHS = 6
DEMO_EVAL_ROWS = 200
# The preference demo (and tests/algorithms/test_preference_learns.py): SFT on demonstrations of
# which this share answers one too high, then this many DPO / KTO steps.
PREFERENCE_SLIP_RATE = 0.6
PREFERENCE_STEPS = 100


def demo_config(output_dir: str, steps: int | None = None, **overrides):
    """The SFTConfig of the demo run (``steps`` overrides the epoch count)."""
    from posttrain.algorithms.sft import SFTConfig

    values = dict(
        output_dir=output_dir,
        learning_rate=3e-3,
        lr_scheduler="cosine",
        warmup_ratio=0.05,
        per_device_train_batch_size=32,
        num_epochs=DEMO_EPOCHS,
        max_steps=steps or 0,
        max_length=64,
        logging_steps=100,
        save_final_model=True,
        mixed_precision="no",
        overwrite_output_dir=True,  # a demo is rerun, each time from scratch
    )
    values.update(overrides)
    return SFTConfig(**values)


def samples_table(result, title: str, count: int = 8) -> Table:
    """A Rich table of the first ``count`` (prompt, generation, answer) triples of an
    :class:`~posttrain.tasks.EvalResult`."""
    table = Table(title=title)
    for column in ("prompt", "generation", "answer", "ok"):
        table.add_column(column)
    for prompt, generation, answer in result.samples[:count]:
        ok = generation.strip() == answer.strip()
        table.add_row(str(prompt), repr(generation), answer, "[green]yes[/]" if ok else "[red]no[/]")
    return table


def preference_config(algorithm: str, output_dir: str, steps: int = PREFERENCE_STEPS, **overrides):
    """The DPOConfig / KTOConfig of the preference demo: few steps at a low learning rate, since
    longer or hotter runs over-optimise on this task (see tests/algorithms/test_preference_learns.py)."""
    from posttrain.algorithms.dpo import DPOConfig
    from posttrain.algorithms.kto import KTOConfig

    values = dict(
        output_dir=output_dir,
        learning_rate=3e-5,
        per_device_train_batch_size=16,
        max_steps=steps,
        beta=0.1,
        lr_scheduler="constant_with_warmup",
        warmup_steps=min(10, steps),
        max_length=64,
        logging_steps=25,
        mixed_precision="no",
        overwrite_output_dir=True,
    )
    values.update(overrides)
    return {"dpo": DPOConfig, "kto": KTOConfig}[algorithm](**values)


def _accuracy_table(held_out: int, stages: list[tuple[str, object]]) -> Table:
    table = Table(title=f"greedy exact match on {held_out} held-out problems")
    for column in ("", "accuracy", "stops with EOS"):
        table.add_column(column)
    for name, result in stages:
        table.add_row(name, f"{result.accuracy:.1%}", f"{result.eos_rate:.1%}")
    return table


def run_demo(output_dir: str = "outputs/demo", steps: int | None = None, console: Console | None = None) -> dict:
    """Train, evaluate before and after, print the comparison; returns the accuracies."""
    from transformers import AutoModelForCausalLM

    from posttrain.algorithms.sft import SFTTrainer
    from posttrain.tasks import ArithmeticTask, exact_match_accuracy
    from posttrain.testing import fixture_path

    console = console or Console(highlight=False)
    task = ArithmeticTask(seed=0)
    model_dir = str(fixture_path("llama-small"))
    held_out = task.prompt_only("test", DEMO_EVAL_ROWS)
    console.rule("[bold]posttrain demo: SFT on arithmetic")
    console.print(f"model: tiny Llama from {model_dir}\ndata: {DEMO_ROWS} training rows like {task.prompt_completion('train', 1)[0]}")

    trainer = SFTTrainer(model_dir, demo_config(output_dir, steps), train_dataset=task.prompt_completion("train", DEMO_ROWS))
    before = exact_match_accuracy(task, AutoModelForCausalLM.from_pretrained(model_dir), trainer.tokenizer, held_out)
    trainer.train()
    after = exact_match_accuracy(task, trainer.model, trainer.tokenizer, held_out)

    console.print(samples_table(after, "held-out prompts after SFT (greedy)"))
    console.print(_accuracy_table(len(held_out), [("before", before), ("after", after)]))
    console.print(f"model, tokenizer and metrics.jsonl in {Path(output_dir).resolve()}")
    return {"accuracy_before": before.accuracy, "accuracy_after": after.accuracy, "eos_rate_after": after.eos_rate}


def run_preference_demo(
    algorithm: str = "dpo",
    output_dir: str = "outputs/demo-preference",
    sft_steps: int | None = None,
    steps: int = PREFERENCE_STEPS,
    console: Console | None = None,
) -> dict:
    """SFT on demonstrations of which 60% are off by one, then DPO or KTO on the task's
    preference data; prints greedy accuracy after each stage and returns both."""
    from posttrain.algorithms.dpo import DPOTrainer
    from posttrain.algorithms.kto import KTOTrainer
    from posttrain.algorithms.sft import SFTTrainer
    from posttrain.tasks import ArithmeticTask, exact_match_accuracy
    from posttrain.testing import fixture_path

    if algorithm not in ("dpo", "kto"):
        raise ValueError(f"algorithm must be dpo or kto, got {algorithm!r}")
    console = console or Console(highlight=False)
    task = ArithmeticTask(seed=0)
    held_out = task.prompt_only("test", DEMO_EVAL_ROWS)
    console.rule(f"[bold]posttrain demo: SFT on noisy demonstrations, then {algorithm.upper()}")
    sft_dir = str(Path(output_dir) / "sft")
    rows = task.prompt_completion("train", DEMO_ROWS, slip_rate=PREFERENCE_SLIP_RATE)
    console.print(f"SFT data: {DEMO_ROWS} rows, {PREFERENCE_SLIP_RATE:.0%} of them one too high, e.g. {rows[1]}")
    sft = SFTTrainer(str(fixture_path("llama-small")), demo_config(sft_dir, sft_steps), train_dataset=rows)
    sft.train()
    start = exact_match_accuracy(task, sft.model, sft.tokenizer, held_out)

    config = preference_config(algorithm, str(Path(output_dir) / algorithm), steps)
    if algorithm == "dpo":
        data = task.preference_pairs("train", steps * config.per_device_train_batch_size)
        trainer = DPOTrainer(str(Path(sft_dir) / "final"), config, train_dataset=data)
    else:
        data = task.unpaired("train", steps * config.per_device_train_batch_size)
        trainer = KTOTrainer(str(Path(sft_dir) / "final"), config, train_dataset=data)
    console.print(f"{algorithm.upper()} data: rows like {data[0]}")
    trainer.train()
    after = exact_match_accuracy(task, trainer.model, trainer.tokenizer, held_out)

    console.print(samples_table(after, f"held-out prompts after {algorithm.upper()} (greedy)"))
    console.print(_accuracy_table(len(held_out), [("after SFT", start), (f"after {algorithm.upper()}", after)]))
    return {"accuracy_sft": start.accuracy, "accuracy_after": after.accuracy, "eos_rate_after": after.eos_rate}
