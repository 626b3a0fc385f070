"""SFT training throughput as a fraction of this machine's matmul peak (DESIGN.md "Measuring speed").

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
import os
import random
import sys
import tempfile
import time

import torch

SIZE = {"hidden_size": 256, "num_layers": 6, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 1024, "max_positions": 512}
WORDS = "the model reads a few words and learns what comes next in every row of text".split()


def matmul_peak(size: int = 2048, repeats: int = 6) -> float:
    """Best float32 FLOP/s of a ``size``-cubed matmul on this device."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def load_average() -> float:
    try:
        with open("/proc/loadavg") as handle:
            return float(handle.read().split()[0])
    except OSError:
        return float("nan")


def make_rows(tokenizer, count: int, min_tokens: int, max_tokens: int, seed: int) -> list[dict]:
    """Text rows whose token counts (EOS included) are spread uniformly in [min, max]."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        target = rng.randint(min_tokens, max_tokens) - 1  # the data layer appends EOS
        words = [rng.choice(WORDS) for _ in range(target)]
        ids = tokenizer(" ".join(words))["input_ids"]
        while len(ids) > target:
            words.pop()
            ids = tokenizer(" ".join(words))["input_ids"]
        rows.append({"text": " ".join(words)})
    return rows


def non_embedding_parameters(model) -> int:
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embedding.numel() - (0 if head is embedding else head.numel())


def run_layout(name: str, rows, model_dir: str, steps: int, warmup: int, **options) -> dict:
    from posttrain.algorithms.sft import SFTConfig, SFTTrainer

    times: list[float] = []
    tokens: list[int] = []

    def record(trainer, state):
        times.append(time.perf_counter())
        tokens.append(state.tokens_seen)

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
        trainer = SFTTrainer(model_dir, config, train_dataset=rows, callbacks=[record])
        trainer.train()
        model = trainer.model
        lengths = trainer.train_source.lengths
    seconds = times[-1] - times[warmup - 1]
    real_tokens = tokens[-1] - tokens[warmup - 1]
    cfg = model.config
    # attention FLOPs per token grow with the length of its own example: weight by tokens
    example_lengths = _example_lengths(trainer)
    mean_context = sum(n * n for n in example_lengths) / max(sum(example_lengths), 1)
    flops_per_token = 6 * non_embedding_parameters(model) + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_context
    return {
        "layout": name,
        "tokens_per_second": real_tokens / seconds,
        "achieved_flops": flops_per_token * real_tokens / seconds,
        "rows_per_step": 8,
        "units": len(lengths),
    }


def _example_lengths(trainer) -> list[int]:
    dataset = trainer.train_source.dataset
    return [len(example["input_ids"]) for unit in range(len(dataset)) for example in dataset[unit]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per layout")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="run even when the machine is busy")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    load = load_average()
    if load > 0.5 * cores and not args.force:
        print(f"refusing: load average {load} on {cores} cores means another job is running (use --force)")
        return 2
    from posttrain.testing import build_causal_lm, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer("chatml")
    model = build_causal_lm("llama", tokenizer, size=SIZE)
    params = sum(p.numel() for p in model.parameters())
    model_dir = tempfile.mkdtemp(prefix="bench-model-")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
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
