"""DPO training throughput, padded against packed and padding-free batches, as a fraction of this machine's
matmul peak (docs/design.md, "Measuring speed"; the method of ``sft_throughput.py``).

    python benchmarks/dpo_throughput.py            # ~6M-parameter Llama, 4 pairs per step
    python benchmarks/dpo_throughput.py --steps 30 --force

Pairs have a 16-64-token prompt and chosen / rejected completions of 16-192 tokens each, so the
``2B`` sequences of a batch vary a lot in length, as preference data does. The reference is
precomputed (``reference_mode="precomputed"``) before timing, so a step is the policy's forward
and backward only: achieved FLOP/s = (6 x non-embedding parameters + attention) x real tokens
per second. Pad tokens are not counted, so padding waste lowers the padded ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile

import torch

from common import (
    StepTimer,
    busy_message,
    flops_per_token,
    load_average,
    make_rows,
    matmul_peak,
    non_embedding_parameters,
    save_benchmark_model,
)

PAIRS_PER_STEP = 4


def make_pairs(tokenizer, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    prompts = make_rows(tokenizer, count, 16, 64, seed)
    completions = make_rows(tokenizer, 2 * count, 16, 192, seed + 1)
    rng.shuffle(completions)
    return [
        {"prompt": prompts[i]["text"], "chosen": " " + completions[2 * i]["text"], "rejected": " " + completions[2 * i + 1]["text"]}
        for i in range(count)
    ]


def run_layout(name: str, pairs, model_dir: str, steps: int, warmup: int, cache_dir: str, **options) -> dict:
    from posttrain.algorithms.dpo import DPOConfig, DPOTrainer

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir, learning_rate=1e-5, per_device_train_batch_size=PAIRS_PER_STEP, max_length=256,
            max_steps=steps + warmup, logging_steps=0, progress_bar=False, save_final_model=False, mixed_precision="no",
            reference_mode="precomputed", ref_logps_cache_dir=cache_dir, **options,
        )
        trainer = DPOTrainer(model_dir, config, train_dataset=pairs, callbacks=[timer])
        trainer.train()
    lengths = [len(item[side]["input_ids"]) for item in trainer.train_source.dataset for side in ("chosen", "rejected")]
    tokens_per_second = timer.tokens_per_second(warmup)
    return {"layout": name, "tokens_per_second": tokens_per_second, "achieved_flops": flops_per_token(trainer.model, lengths) * tokens_per_second}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per layout")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="run even when the machine is busy")
    args = parser.parse_args(argv)

    load = load_average()
    if busy_message() and not args.force:
        print(busy_message())
        return 2
    model, tokenizer, model_dir = save_benchmark_model()
    pairs = make_pairs(tokenizer, PAIRS_PER_STEP * (args.steps + args.warmup) * 2, seed=0)
    cache_dir = tempfile.mkdtemp(prefix="bench-ref-")

    peak_before = matmul_peak()
    results = [
        run_layout("padded", pairs, model_dir, args.steps, args.warmup, cache_dir),
        run_layout("packed (256)", pairs, model_dir, args.steps, args.warmup, cache_dir, packing=True),
        run_layout("padding-free", pairs, model_dir, args.steps, args.warmup, cache_dir, padding_free=True),
    ]
    peak_after = matmul_peak()
    peak = (peak_before + peak_after) / 2
    print(f"model: Llama {non_embedding_parameters(model) / 1e6:.2f}M non-embedding parameters, {PAIRS_PER_STEP} pairs per step "
          f"(prompt 16-64, completions 16-192 tokens), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak {peak_before / 1e9:.1f} / {peak_after / 1e9:.1f} GFLOP/s (before/after); load average {load} -> {load_average()}")
    for result in results:
        print(f"  {result['layout']:<14} {result['tokens_per_second']:>9,.0f} tokens/s  "
              f"{result['achieved_flops'] / 1e9:6.1f} GFLOP/s  {result['achieved_flops'] / peak:.2f} of peak")
    for result in results[1:]:
        print(f"{result['layout']} / padded tokens per second: {result['tokens_per_second'] / results[0]['tokens_per_second']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
