"""What the throughput benchmarks share (docs/design.md, "Measuring speed"): the matmul peak, the load
check, the benchmark model, synthetic rows, step timing and the FLOP count per token."""

from __future__ import annotations

import os
import random
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


def parse_benchmark_args(argv, description: str, steps: int, warmup: int, add_arguments=None):
    """The options every benchmark takes: ``--steps``, ``--warmup``, ``--force``, ``--json``;
    ``add_arguments(parser)``, when given, adds a benchmark's own."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")
    parser.add_argument("--force", action="store_true", help="run even when the machine is busy")
    parser.add_argument("--json", help="also write the results to this file")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def peak_report(before: float, after: float, load: float) -> str:
    """The line every benchmark prints about the matmul peak and the load around its run."""
    return f"matmul peak {before / 1e9:.1f} / {after / 1e9:.1f} GFLOP/s (before/after); load average {load} -> {load_average()}"


def save_results(path: str | None, peak: float, load: float, results: list[dict]) -> None:
    """Write ``{peak_flops, load_before, results}`` as JSON to ``path`` (nothing when None)."""
    if path:
        import json

        with open(path, "w") as handle:
            json.dump({"peak_flops": peak, "load_before": load, "results": results}, handle, indent=2)


def load_average() -> float:
    try:
        with open("/proc/loadavg") as handle:
            return float(handle.read().split()[0])
    except OSError:
        return float("nan")


def busy_message() -> str | None:
    """Why not to measure now (another job is running), or None."""
    cores, load = os.cpu_count() or 1, load_average()
    if load > 0.5 * cores:
        return f"refusing: load average {load} on {cores} cores means another job is running (use --force)"
    return None


def save_benchmark_model():
    """``(model, tokenizer, directory)``: the seeded ~6M-parameter Llama of the benchmarks, saved
    to a temporary directory for ``from_pretrained``."""
    from posttrain.testing import build_causal_lm, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer("chatml")
    model = build_causal_lm("llama", tokenizer, size=SIZE)
    directory = tempfile.mkdtemp(prefix="bench-model-")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer, directory


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


def flops_per_token(model, sequence_lengths: list[int], include_head: bool = False) -> float:
    """Training FLOPs per real token: 6 x non-embedding parameters plus attention, whose cost per
    token grows with the length of the token's own sequence (token-weighted mean). As usual (PaLM
    appendix B) attention is not halved for causality. ``include_head`` also counts the LM head's
    matmul (6 x vocabulary x hidden; tied or not), which dominates a small model with a large
    vocabulary."""
    mean_context = sum(n * n for n in sequence_lengths) / max(sum(sequence_lengths), 1)
    cfg = model.config
    parameters = non_embedding_parameters(model) + (model.get_output_embeddings().weight.numel() if include_head else 0)
    return 6 * parameters + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_context


class StepTimer:
    """A trainer callback recording the time and ``tokens_seen`` after every optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[int] = []

    def __call__(self, trainer, state) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(state.tokens_seen)

    def tokens_per_second(self, warmup: int) -> float:
        """Real tokens per second over the steps after the first ``warmup``."""
        return (self.tokens[-1] - self.tokens[warmup - 1]) / (self.times[-1] - self.times[warmup - 1])
