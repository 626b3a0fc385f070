"""Attention of one decoding step (one query row per sequence) on the keys and values of a
static cache's filled slots: SDPA against a batched ``baddbmm`` / ``bmm`` of the same maths.

    python benchmarks/decode_attention.py                  # the benchmark Llama's decoding shapes
    python benchmarks/decode_attention.py --filled 300 --force

The shapes are GRPO's rollout in ``grpo_race.py`` on the benchmark Llama: 64 rows, 8 heads of 32,
~94 filled slots on average (a ~30-token prompt and half of 128 new tokens) in a cache of 158;
the keys and values are views of the filled part of six such caches, one per layer (as
``posttrain/rollout/filled_cache.py`` hands them to attention), and a few rows are left-padded.
Reports milliseconds per layer (best of ``--steps``) and the largest difference from SDPA.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from common import busy_message, load_average, parse_benchmark_args, save_results

ROWS, HEADS, HEAD_DIM, LAYERS = 64, 8, 32, 6


def add_arguments(parser) -> None:
    parser.add_argument("--filled", type=int, default=94, help="filled cache slots")
    parser.add_argument("--slots", type=int, default=158, help="cache length")


def batched_attention(query, keys, values, additive_mask, scale):
    """Attention of ``query (B, H, 1, D)`` over ``keys``/``values (B, H, L, D)`` with an additive
    ``(B, 1, 1, L)`` mask, as two batched matmuls over the ``B * H`` heads."""
    rows, heads, _, dim = query.shape
    length = keys.shape[2]
    scores = torch.baddbmm(
        additive_mask.expand(rows, heads, 1, length).reshape(rows * heads, 1, length),
        query.reshape(rows * heads, 1, dim), keys.reshape(rows * heads, length, dim).transpose(1, 2), alpha=scale,
    )
    return torch.bmm(scores.softmax(-1), values.reshape(rows * heads, length, dim)).view(rows, heads, 1, dim)


def main(argv=None) -> int:
    args = parse_benchmark_args(argv, __doc__.splitlines()[0], steps=5, warmup=1, add_arguments=add_arguments)
    busy = busy_message()
    if busy and not args.force:
        print(busy)
        return 2
    load = load_average()
    torch.manual_seed(0)
    query = torch.randn(ROWS, HEADS, 1, HEAD_DIM)
    caches = [(torch.randn(ROWS, HEADS, args.slots, HEAD_DIM), torch.randn(ROWS, HEADS, args.slots, HEAD_DIM)) for _ in range(LAYERS)]
    layers = [(k[:, :, : args.filled], v[:, :, : args.filled]) for k, v in caches]
    allowed = torch.ones(ROWS, 1, 1, args.filled, dtype=torch.bool)
    allowed[: ROWS // 8, :, :, :5] = False  # left padding of some prompts
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    scale = HEAD_DIM**-0.5
    variants = {
        "sdpa": lambda k, v: F.scaled_dot_product_attention(query, k, v, attn_mask=allowed),
        "baddbmm": lambda k, v: batched_attention(query, k, v, additive, scale),
    }
    reference = variants["sdpa"](*layers[0])
    results = []
    for name, attend in variants.items():
        for _ in range(args.warmup):
            attend(*layers[0])
        best = float("inf")
        for _ in range(args.steps):
            start = time.perf_counter()
            for keys, values in layers:
                attend(keys, values)
            best = min(best, (time.perf_counter() - start) / LAYERS)
        difference = (attend(*layers[0]) - reference).abs().max().item()
        results.append({"variant": name, "ms_per_layer": 1e3 * best, "max_abs_difference": difference})
        print(f"{name:>8}: {1e3 * best:.3f} ms per layer; largest difference from sdpa {difference:.1e}")
    print(f"{ROWS} rows x {HEADS} heads x {HEAD_DIM}, {args.filled} of {args.slots} slots, {torch.get_num_threads()} threads; load average {load} -> {load_average()}")
    save_results(args.json, 0.0, load, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
