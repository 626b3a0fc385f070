"""One step of online RL, GRPO and PPO, split into its parts (docs/design.md, "Measuring speed").

    python benchmarks/online_step.py             # ~6M-parameter Llama, up to 128 new tokens
    python benchmarks/online_step.py --steps 5 --force

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
"""

from __future__ import annotations

import json
import statistics
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
    parts = {"generation": "time/generation", "rewards": "time/rewards", "passes": "time/experience", "optimisation": "time/training"}
    result = {"algorithm": name, **{part: statistics.median(r[key] for r in records) for part, key in parts.items()}}
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


def main(argv=None) -> int:
    args = parse_benchmark_args(argv, __doc__.splitlines()[0], steps=3, warmup=1)
    load, busy = load_average(), busy_message()
    if busy and not args.force:
        print(busy)
        return 2
    model, _, model_dir = save_benchmark_model()
    peak_before = matmul_peak()
    results = [run(name, model_dir, args.steps, args.warmup) for name in ("grpo", "ppo")]
    peak_after = matmul_peak()
    peak = (peak_before + peak_after) / 2
    print(f"model: Llama {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
          f"({non_embedding_parameters(model) / 1e6:.2f}M non-embedding), 64 sequences per step, up to {MAX_NEW_TOKENS} new tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(peak_report(peak_before, peak_after, load))
    print(f"  {'':<5} {'generation':>11} {'rewards':>8} {'passes':>8} {'optimise':>9}   {'gen tok/s':>9}  {'optimisation':>22}")
    for r in results:
        r["fraction_of_peak"] = r["optimisation_flops"] / peak
        print(f"  {r['algorithm']:<5} {r['generation']:>10.2f}s {r['rewards']:>7.3f}s {r['passes']:>7.2f}s {r['optimisation']:>8.2f}s   "
              f"{r['generation_tokens_per_second']:>9,.0f}  {r['optimisation_flops'] / 1e9:6.1f} GFLOP/s {r['fraction_of_peak']:.2f} of peak")
    save_results(args.json, peak, load, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
