"""One step of online RL, GRPO and PPO, split into its parts (docs/design.md, "Measuring speed").

    python benchmarks/online_step.py             # ~6M-parameter Llama, up to 128 new tokens
    python benchmarks/online_step.py --steps 5 --force
    git worktree add /tmp/before <commit>        # then, before/after in alternated processes:
    python benchmarks/online_step.py --before /tmp/before --rounds 2 --force

Both run the real trainers' loop on the benchmark Llama with a length reward (so scoring costs
nothing and completions run long: a random model rarely emits EOS):

- GRPO: 8 prompts x 8 generations per step, one optimizer step per generation batch, a KL term
  (``beta=0.04``) so the reference pass is part of the step;
- PPO: 64 prompts x 1 generation, one mini-batch of 64 and ``ppo_epochs=1`` (each further epoch
  adds one optimisation part), ``kl_coef=0.05``, the default critic (a copy of the backbone).

For each, the trainer's own timers give the split per step (medians over the timed steps):
generation, rewards, log-prob (+ value) passes without grad, and optimisation (forward, backward
and optimizer step). Generation speed is completion tokens per second. The optimisation part is
reported as achieved FLOP/s, ``6 x non-embedding parameters x tokens`` (plus attention, per
sequence length; PPO counts the critic's backbone too) over its time, divided by the float32
matmul peak measured in the same process before and after. /proc/loadavg is recorded; the
script refuses to run under foreign load unless ``--force``.

``--before PATH`` also measures the code at PATH (a checkout of an earlier commit): each round
runs "before" and "after" (this checkout) in fresh processes, one after the other, and the table
shows both rows of each algorithm with the ratio of each part. The FLOP count is that of the
sequences the step trains on, whatever layout runs them (a layout that runs fewer tokens shows as
more FLOP/s).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import (
    busy_message,
    flops_per_token,
    load_average,
    matmul_peak,
    non_embedding_parameters,
    parse_benchmark_args,
    peak_report,
    save_benchmark_model,
    save_results,
)

MAX_NEW_TOKENS = 128
PARTS = {"generation": "time/generation", "rewards": "time/rewards", "passes": "time/experience", "optimisation": "time/training"}


def length_reward(completions):
    return [float(len(c)) for c in completions]


def prompt_rows(count: int) -> list[dict]:
    from posttrain.tasks import ArithmeticTask

    return [{"prompt": f"Question {i}: {row['prompt']} Explain your reasoning."} for i, row in enumerate(ArithmeticTask(seed=0).prompt_only("train", count))]


def run(name: str, model_dir: str, steps: int, warmup: int) -> dict:
    from posttrain.algorithms.grpo import GRPOConfig, GRPOTrainer
    from posttrain.algorithms.ppo import PPOConfig, PPOTrainer

    total = steps + warmup
    with tempfile.TemporaryDirectory() as output_dir:
        common = dict(
            output_dir=output_dir, learning_rate=1e-5, max_completion_length=MAX_NEW_TOKENS, max_steps=total, logging_steps=1,
            progress_bar=False, save_final_model=False, mixed_precision="no", per_device_eval_batch_size=64, generation_batch_size=64,
        )
        if name == "grpo":
            config = GRPOConfig(**common, num_generations=8, per_device_train_batch_size=64, beta=0.04)
            trainer = GRPOTrainer(model_dir, config, train_dataset=prompt_rows(8 * total), reward_funcs=[length_reward])
        else:
            config = PPOConfig(**common, batch_size=64, per_device_train_batch_size=64, ppo_epochs=1, kl_coef=0.05)
            trainer = PPOTrainer(model_dir, config, train_dataset=prompt_rows(64 * total), reward_funcs=[length_reward])
        trainer.train()
        records = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()][warmup:]
    result = {"algorithm": name, **{part: statistics.median(r[key] for r in records) for part, key in PARTS.items()}}
    result["generation_tokens_per_second"] = statistics.median(r["generation/tokens_per_second"] for r in records)
    result["completion_tokens"] = statistics.median(r["completions/mean_length"] for r in records) * 64
    # trained tokens per step: prompt + completion of each of the 64 sequences
    prompt_tokens = statistics.mean(len(item["prompt_ids"]) for item in trainer.train_source.dataset)
    lengths = [int(prompt_tokens + r["completions/mean_length"]) for r in records for _ in range(64)]
    trained_tokens = sum(lengths) / len(records)
    networks = 2 if name == "ppo" else 1  # PPO trains the critic's copy of the backbone as well
    result["trained_tokens"] = trained_tokens
    result["optimisation_flops"] = networks * flops_per_token(trainer.model, lengths) * trained_tokens / result["optimisation"]
    return result


def measure_in_process(model_dir: str, steps: int, warmup: int) -> dict:
    """Both algorithms in this process, between two matmul-peak measurements."""
    peak_before = matmul_peak()
    results = [run(name, model_dir, steps, warmup) for name in ("grpo", "ppo")]
    return {"peak_before": peak_before, "peak_after": matmul_peak(), "results": results}


def measure_in_child(code: Path, model_dir: str, steps: int, warmup: int) -> dict:
    """:func:`measure_in_process` in a fresh process importing posttrain from ``code``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", model_dir, out.name, str(steps), str(warmup)]
        env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the run of {code} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def median_rows(measured: list[dict]) -> list[dict]:
    """Per algorithm, the median of each number over rounds."""
    rows = []
    for index, first in enumerate(measured[0]["results"]):
        rounds = [m["results"][index] for m in measured]
        rows.append({key: (statistics.median(r[key] for r in rounds) if isinstance(value, float | int) else value) for key, value in first.items()})
    return rows


def print_table(rows_by_code: dict[str, list[dict]], peak: float) -> None:
    print(f"  {'':<12} {'generation':>11} {'rewards':>8} {'passes':>8} {'optimise':>9}   {'gen tok/s':>9}  {'optimisation':>22}")
    for name, rows in rows_by_code.items():
        for r in rows:
            r["fraction_of_peak"] = r["optimisation_flops"] / peak
            label = f"{r['algorithm']} {name}".strip()
            print(f"  {label:<12} {r['generation']:>10.2f}s {r['rewards']:>7.3f}s {r['passes']:>7.2f}s {r['optimisation']:>8.2f}s   "
                  f"{r['generation_tokens_per_second']:>9,.0f}  {r['optimisation_flops'] / 1e9:6.1f} GFLOP/s {r['fraction_of_peak']:.2f} of peak")
    if "before" in rows_by_code:
        for before, after in zip(rows_by_code["before"], rows_by_code["after"]):
            ratios = ", ".join(f"{part} {before[part] / after[part]:.2f}x" for part in PARTS if after[part] > 0)
            total = sum(before[p] for p in PARTS) / sum(after[p] for p in PARTS)
            print(f"  {after['algorithm']} after vs before (time before / after): {ratios}; the four parts together {total:.2f}x")


def main(argv=None) -> int:
    def add_arguments(parser):
        parser.add_argument("--before", help="a checkout of earlier code to measure against, alternated in fresh processes")
        parser.add_argument("--rounds", type=int, default=1, help="with --before: alternated rounds")

    args = parse_benchmark_args(argv, __doc__.splitlines()[0], steps=3, warmup=1, add_arguments=add_arguments)
    load, busy = load_average(), busy_message()
    if busy and not args.force:
        print(busy)
        return 2
    model, _, model_dir = save_benchmark_model()
    here = Path(__file__).resolve().parent.parent
    if args.before:
        measured = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, code in (("before", Path(args.before).resolve()), ("after", here)):
                measured[name].append(measure_in_child(code, model_dir, args.steps, args.warmup))
        rows = {name: median_rows(runs) for name, runs in measured.items()}
        peaks = [m[key] for runs in measured.values() for m in runs for key in ("peak_before", "peak_after")]
        peak_before, peak_after = peaks[0], peaks[-1]
    else:
        single = measure_in_process(model_dir, args.steps, args.warmup)
        rows, peak_before, peak_after = {"": single["results"]}, single["peak_before"], single["peak_after"]
    peak = (peak_before + peak_after) / 2
    print(f"model: Llama {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
          f"({non_embedding_parameters(model) / 1e6:.2f}M non-embedding), 64 sequences per step, up to {MAX_NEW_TOKENS} new tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(peak_report(peak_before, peak_after, load))
    print_table(rows, peak)
    save_results(args.json, peak, load, [dict(r, code=name or "this checkout") for name, code_rows in rows.items() for r in code_rows])
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _, _, directory, out, steps, warmup = sys.argv
        Path(out).write_text(json.dumps(measure_in_process(directory, int(steps), int(warmup))))
        sys.exit(0)
    sys.exit(main())
