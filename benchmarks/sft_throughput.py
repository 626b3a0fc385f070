"""SFT training throughput as a fraction of this machine's matmul peak (docs/design.md, "Measuring speed").

    python benchmarks/sft_throughput.py            # ~6M-parameter Llama, batch 8 x 256 tokens
    python benchmarks/sft_throughput.py --steps 30 --force

For each batch layout (padded rows of varied length, the same rows packed, and uniform full-length
rows as the no-padding ceiling) it runs the real ``SFTTrainer`` loop and reports

    achieved FLOP/s = (6 x non-embedding parameters + 12 x layers x hidden x sequence length)
                      x trained-on-or-not real tokens per second

divided by the float32 matmul peak measured in the same process just before and after (the
best of several 2048^3 matmuls). Pad tokens do no useful work and are not counted, so padding
waste shows up as a lower ratio. The attention term uses each example's own length (packed
examples do not attend across their boundary) and, as usual (PaLM appendix B), is not halved
for causality. /proc/loadavg is recorded; the script refuses to run under foreign load unless
``--force``.
"""

from __future__ import annotations

import argparse
import json
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


def run_layout(name: str, rows, model_dir: str, steps: int, warmup: int, **options) -> dict:
    from posttrain.algorithms.sft import SFTConfig, SFTTrainer

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(
            output_dir=output_dir,
            learning_rate=1e-4,
            per_device_train_batch_size=8,
            max_length=256,
            max_steps=steps + warmup,
            logging_steps=0,
            progress_bar=False,
            save_final_model=False,
            mixed_precision="no",
            **options,
        )
        trainer = SFTTrainer(model_dir, config, train_dataset=rows, callbacks=[timer])
        trainer.train()
    # attention FLOPs per token grow with the length of its own example (packed ones included)
    dataset = trainer.train_source.dataset
    example_lengths = [len(example["input_ids"]) for unit in range(len(dataset)) for example in dataset[unit]]
    tokens_per_second = timer.tokens_per_second(warmup)
    return {
        "layout": name,
        "tokens_per_second": tokens_per_second,
        "achieved_flops": flops_per_token(trainer.model, example_lengths) * tokens_per_second,
        "rows_per_step": 8,
        "units": len(trainer.train_source.lengths),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per layout")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="run even when the machine is busy")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    load = load_average()
    if busy_message() and not args.force:
        print(busy_message())
        return 2
    model, tokenizer, model_dir = save_benchmark_model()
    params = sum(p.numel() for p in model.parameters())
    count = 8 * (args.steps + args.warmup) * 2
    varied = make_rows(tokenizer, count, 64, 256, seed=0)
    uniform = make_rows(tokenizer, count, 256, 256, seed=1)

    peak_before = matmul_peak()
    results = [
        run_layout("padded (64-256 tokens)", varied, model_dir, args.steps, args.warmup),
        run_layout("packed (64-256 tokens)", varied, model_dir, args.steps, args.warmup, packing=True),
        run_layout("uniform 256 (no padding)", uniform, model_dir, args.steps, args.warmup),
    ]
    peak_after = matmul_peak()
    peak = (peak_before + peak_after) / 2
    print(f"model: Llama {params / 1e6:.2f}M parameters ({non_embedding_parameters(model) / 1e6:.2f}M non-embedding), "
          f"batch 8 x up to 256 tokens, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak {peak_before / 1e9:.1f} / {peak_after / 1e9:.1f} GFLOP/s (before/after); load average {load} -> {load_average()}")
    for result in results:
        result["fraction_of_peak"] = result["achieved_flops"] / peak
        print(f"  {result['layout']:<26} {result['tokens_per_second']:>9,.0f} tokens/s  "
              f"{result['achieved_flops'] / 1e9:6.1f} GFLOP/s  {result['fraction_of_peak']:.2f} of peak")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"peak_flops": peak, "load_before": load, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
