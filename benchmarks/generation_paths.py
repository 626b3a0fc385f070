"""Generation tokens/s of each path of the rollout engine (posttrain/rollout/decoding.py), alternated.

    python benchmarks/generation_paths.py                        # every path on this device, 3 rounds
    python benchmarks/generation_paths.py --paths dynamic,static --rounds 5 --force
    python benchmarks/generation_paths.py --device cuda --size qwen0.5b   # on a GPU

The workload is GRPO's rollout in benchmarks/grpo_race.py: 8 prompts x 8 generations, up to 128 new
tokens sampled at temperature 1, one ``generate`` call of 64 sequences, on the ~6M-parameter
benchmark Llama (``--size qwen0.5b``: a Qwen2.5-0.5B-shaped model with random weights, for GPUs).
Each path runs once untimed (caches, compilation), then the paths take turns for ``--rounds``
rounds in one process, each call from the same seed, so every path draws its random numbers in
the same order: the timed calls of the paths that share the plain path's maths generate the same
tokens, which the script checks ("same tokens as dynamic"). A path is reported with and without
the shared prompt prefill. Speed is generated tokens (stop tokens included) per second of the
``generate`` call, median over rounds; /proc/loadavg is recorded before and after.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from common import busy_message, load_average, parse_benchmark_args, save_benchmark_model

PROMPTS, GENERATIONS, MAX_NEW_TOKENS = 8, 8, 128


def add_arguments(parser) -> None:
    parser.add_argument("--paths", default="dynamic,static,static_compiled,continuous_batching", help="comma-separated generation paths")
    parser.add_argument("--rounds", type=int, default=3, help="alternated timed calls of each path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="bench", choices=("bench", "qwen0.5b"), help="bench: the 6M Llama; qwen0.5b: for a GPU")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))


def load_model(size: str, device: str, dtype: str):
    from transformers import AutoModelForCausalLM

    if size == "bench":
        _, tokenizer, directory = save_benchmark_model()
        model = AutoModelForCausalLM.from_pretrained(directory)
    else:
        from gpu_throughput import FULL, save_model  # a Qwen2.5-0.5B-shaped model with random weights

        tokenizer, directory, _ = save_model(FULL, torch.device(device))
        model = AutoModelForCausalLM.from_pretrained(directory)
    return model.to(device=device, dtype=getattr(torch, dtype)), tokenizer


def prompt_ids(tokenizer) -> list[list[int]]:
    from posttrain.tasks import ArithmeticTask

    rows = ArithmeticTask(seed=0).prompt_only("train", PROMPTS)
    return [tokenizer(f"Question {i}: {row['prompt']} Explain your reasoning.")["input_ids"] for i, row in enumerate(rows)]


def variants(paths: list[str]) -> list[tuple[str, bool]]:
    """(path, share the prompt prefill) pairs to measure; continuous batching forks groups itself."""
    return [(path, share) for path in paths for share in ((False,) if path == "continuous_batching" else (False, True))]


def main(argv=None) -> int:
    args = parse_benchmark_args(argv, __doc__.splitlines()[0], steps=0, warmup=1, add_arguments=add_arguments)
    load, busy = load_average(), busy_message()
    if busy and not args.force:
        print(busy)
        return 2
    from posttrain.rollout import HFGenerationEngine, SamplingOptions

    model, tokenizer = load_model(args.size, args.device, args.dtype)
    prompts = prompt_ids(tokenizer)
    options = SamplingOptions(max_completion_length=MAX_NEW_TOKENS, temperature=1.0)
    engines, reference, results = {}, None, {}
    for path, share in variants(args.paths.split(",")):
        engine = HFGenerationEngine(model, tokenizer, batch_size=PROMPTS * GENERATIONS, path=path, share_prompt_prefill=share, notify=print)
        start = time.perf_counter()
        torch.manual_seed(0)
        try:
            tokens = [c.token_ids for c in engine.generate(prompts, options, GENERATIONS)]
        except Exception as error:  # a path this device or model cannot run: said, and skipped
            print(f"{path:>20} shared={share!s:<5}: cannot run here: {str(error).splitlines()[0][:200]}")
            continue
        name = f"{path}{' +shared prefill' if share else ''}"
        engines[name] = engine
        reference = tokens if reference is None else reference
        results[name] = {"first_call_seconds": time.perf_counter() - start, "same_tokens_as_first": tokens == reference, "rounds": []}
        print(f"{name:>36}: first call {results[name]['first_call_seconds']:.1f} s (caches, compilation)", flush=True)
    for _ in range(args.rounds):
        for name, engine in engines.items():
            torch.manual_seed(0)
            completions = engine.generate(prompts, options, GENERATIONS)
            results[name]["rounds"].append(engine.last_stats.tokens_per_second)
            print(f"{name:>36}: {engine.last_stats.tokens_per_second:8,.0f} tokens/s", flush=True)  # as it goes: a time limit may cut the run
            results[name]["same_tokens_as_first"] &= [c.token_ids for c in completions] == reference
    print(f"model: {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.dtype}) on {args.device}, "
          f"{PROMPTS} prompts x {GENERATIONS} generations, up to {MAX_NEW_TOKENS} new tokens, {torch.get_num_threads()} threads; "
          f"load average {load} -> {load_average()}")
    first = next(iter(results), None)
    for name, result in results.items():
        result["median_tokens_per_second"] = statistics.median(result["rounds"])
        print(f"  {name:>36}: {result['median_tokens_per_second']:8,.0f} tokens/s (rounds: {', '.join(f'{r:,.0f}' for r in result['rounds'])}); "
              f"same tokens as {first}: {result['same_tokens_as_first']}")
    if args.json:
        import json

        with open(args.json, "w") as handle:
            json.dump({"load_before": load, "device": args.device, "size": args.size, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
