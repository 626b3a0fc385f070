"""One GRPO step of posttrain against TRL's, at equal settings, each library in a fresh process.

    python benchmarks/grpo_race.py                       # 2 rounds, 1 warm-up + 3 timed steps each
    python benchmarks/grpo_race.py --rounds 3 --steps 4 --force
    python benchmarks/grpo_race.py --trl-python /path/to/venv/bin/python
    python benchmarks/grpo_race.py --set torch_compile=true   # posttrain with options beyond its defaults

TRL is not a dependency of posttrain: it lives in its own virtual environment, by default
``.venv-trl`` at the repository root (or ``$POSTTRAIN_TRL_PYTHON``), made with

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install torch==2.13.0 "trl==1.16.*"    # CPU-only machine: torch==2.13.0+cpu
                                                            # from https://download.pytorch.org/whl/cpu

Without it, only posttrain runs, and the script says so.

Settings (both libraries): the ~6M-parameter benchmark Llama of ``common.py``, 8 prompts x 8
generations per step, up to 128 new tokens at temperature 1, a length reward (a random model
rarely emits EOS, so completions run long and scoring costs nothing), ``beta=0`` (no reference
model), float32 (TRL's ``bf16`` default switched off), one optimizer step per generation batch
(``num_iterations=1``, one micro-batch of 64 completions), gradient checkpointing off (TRL's
default is on), the same learning rate and seed, each library's default generation path.

Rounds alternate the libraries (posttrain, TRL, posttrain, TRL, ...), each run in a new process
that loads the saved model; a step's time is the wall time between the ends of two optimizer
steps, measured by a callback of the library's own. The ratio compares medians of the timed steps
over all rounds; per completion token too, since the two libraries sample different completions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPTS_PER_STEP, GENERATIONS, MAX_NEW_TOKENS, LEARNING_RATE, SEED = 8, 8, 128, 1e-5, 0
# posttrain's own timers of a step's parts (metrics.jsonl), reported beside its step time
PARTS = {"generation": "time/generation", "rewards": "time/rewards", "experience": "time/experience", "training": "time/training"}


def length_reward(completions, **kwargs):
    """Both libraries call reward functions with the completions' text (and keyword columns)."""
    return [float(len(c)) for c in completions]


# ---------------------------------------------------------------------- children (one library each)


def run_posttrain(model_dir: str, prompts: list[dict], steps: int, output_dir: str, options: dict | None = None) -> dict:
    from posttrain.algorithms.grpo import GRPOConfig, GRPOTrainer

    times = []
    values = dict(
        output_dir=output_dir, learning_rate=LEARNING_RATE, seed=SEED, num_generations=GENERATIONS,
        per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS, generation_batch_size=PROMPTS_PER_STEP * GENERATIONS,
        max_completion_length=MAX_NEW_TOKENS, beta=0.0, max_steps=steps, logging_steps=1, progress_bar=False,
        save_final_model=False, mixed_precision="no", gradient_checkpointing=False,
    )
    config = GRPOConfig(**{**values, **(options or {})})
    trainer = GRPOTrainer(model_dir, config, train_dataset=prompts, reward_funcs=[length_reward], callbacks=[lambda *_: times.append(time.perf_counter())])
    trainer.train()
    records = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    parts = {part: [r[key] for r in records if key in r] for part, key in PARTS.items()}
    return {"step_ends": times, "mean_completion_length": [r["completions/mean_length"] for r in records if "completions/mean_length" in r], "parts": parts}


def run_trl(model_dir: str, prompts: list[dict], steps: int, output_dir: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    from datasets import Dataset

    config = GRPOConfig(
        output_dir=output_dir, learning_rate=LEARNING_RATE, seed=SEED, num_generations=GENERATIONS,
        per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS, max_completion_length=MAX_NEW_TOKENS, beta=0.0,
        max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=config, reward_funcs=[length_reward],
        train_dataset=Dataset.from_list(prompts), processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[StepEnds()],
    )
    trainer.train()
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    return {"step_ends": times, "mean_completion_length": lengths}


def child(arguments) -> int:
    prompts = json.loads(Path(arguments.prompts).read_text())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        if arguments.child == "posttrain":
            result = run_posttrain(arguments.model, prompts, arguments.total_steps, output_dir, json.loads(arguments.options))
        else:
            result = run_trl(arguments.model, prompts, arguments.total_steps, output_dir)
    result["start"] = start
    Path(arguments.out).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------- parent


def posttrain_options(pairs: list[str], parser) -> dict:
    """``{"torch_compile": True}`` from ``["torch_compile=true"]`` (values read as JSON, else kept as strings)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def trl_python(given: str | None) -> str | None:
    candidate = given or os.environ.get("POSTTRAIN_TRL_PYTHON") or str(REPO / ".venv-trl" / "bin" / "python")
    return candidate if Path(candidate).exists() else None


def step_seconds(result: dict, warmup: int) -> list[float]:
    """Wall seconds of each timed step: between the ends of consecutive optimizer steps."""
    ends = result["step_ends"]
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:])] if warmup else [ends[0] - result["start"]] + [b - a for a, b in zip(ends, ends[1:])]


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    from common import busy_message, load_average, save_benchmark_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each library")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1: the first step builds caches)")
    parser.add_argument("--trl-python", default=None, help="python of the environment with TRL (default: .venv-trl/bin/python or $POSTTRAIN_TRL_PYTHON)")
    parser.add_argument("--force", action="store_true", help="run even when the machine is busy")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a GRPOConfig option for posttrain's runs (VALUE as JSON, else a string); repeatable")
    arguments = parser.parse_args(argv)
    options = posttrain_options(arguments.set, parser)
    if arguments.warmup < 1:
        parser.error("--warmup must be >= 1")
    busy = busy_message()
    if busy and not arguments.force:
        print(busy)
        return 2
    other = trl_python(arguments.trl_python)
    if other is None:
        print("TRL environment not found: posttrain runs alone (see the module docstring for the two commands that make .venv-trl)")
    load = load_average()
    _, _, model_dir = save_benchmark_model()
    from posttrain.tasks import ArithmeticTask

    total = arguments.warmup + arguments.steps
    rows = ArithmeticTask(seed=0).prompt_only("train", PROMPTS_PER_STEP * total)
    prompts = [{"prompt": f"Question {i}: {row['prompt']} Explain your reasoning."} for i, row in enumerate(rows)]
    work = Path(tempfile.mkdtemp(prefix="grpo-race-"))
    (work / "prompts.json").write_text(json.dumps(prompts))
    libraries = {"posttrain": sys.executable, **({"trl": other} if other else {})}
    runs: dict[str, list[dict]] = {name: [] for name in libraries}
    for round_index in range(arguments.rounds):
        for name, python in libraries.items():
            out = work / f"{name}-{round_index}.json"
            command = [python, str(Path(__file__).resolve()), "--child", name, "--model", model_dir, "--prompts", str(work / "prompts.json"),
                       "--total-steps", str(total), "--out", str(out), "--options", json.dumps(options)]
            env = {**os.environ, "PYTHONPATH": str(REPO) if name == "posttrain" else "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} run {round_index} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                return 1
            result = json.loads(out.read_text())
            seconds = step_seconds(result, arguments.warmup)
            tokens = [length * PROMPTS_PER_STEP * GENERATIONS for length in result["mean_completion_length"][arguments.warmup :]]
            parts = {part: values[arguments.warmup :] for part, values in result.get("parts", {}).items()}
            runs[name].append({"step_seconds": seconds, "completion_tokens": tokens, "parts": parts})
            split = "; parts (median): " + ", ".join(f"{part} {statistics.median(v):.2f}" for part, v in parts.items() if v) if parts else ""
            print(f"round {round_index} {name:>9}: steps {', '.join(f'{s:.2f}' for s in seconds)} s; "
                  f"completion tokens per step {', '.join(f'{t:.0f}' for t in tokens)}{split}", flush=True)
    summary = {}
    for name, measured in runs.items():
        seconds = [s for run in measured for s in run["step_seconds"]]
        per_token = [s / t for run in measured for s, t in zip(run["step_seconds"], run["completion_tokens"]) if t]
        summary[name] = {"median_step_seconds": statistics.median(seconds), "median_ms_per_completion_token": 1e3 * statistics.median(per_token), "runs": measured}
    print(f"load average {load} -> {load_average()}; {os.cpu_count()} cores")
    for name, values in summary.items():
        print(f"  {name:>9}: {values['median_step_seconds']:.2f} s per step, {values['median_ms_per_completion_token']:.3f} ms per completion token")
    if "trl" in summary:
        ratio = summary["trl"]["median_step_seconds"] / summary["posttrain"]["median_step_seconds"]
        per_token = summary["trl"]["median_ms_per_completion_token"] / summary["posttrain"]["median_ms_per_completion_token"]
        summary["speedup_per_step"], summary["speedup_per_token"] = ratio, per_token
        print(f"  posttrain is {ratio:.2f}x TRL per step ({per_token:.2f}x per completion token)")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps({"load_before": load, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        parser = argparse.ArgumentParser()
        for flag in ("--child", "--model", "--prompts", "--out"):
            parser.add_argument(flag, required=True)
        parser.add_argument("--options", default="{}")
        parser.add_argument("--total-steps", type=int, required=True)
        sys.exit(child(parser.parse_args()))
    sys.exit(main())
