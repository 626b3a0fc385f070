"""Peak memory of one distillation step, chunked heads vs both models' full logits, 32k vocabulary;
and the error of the teacher top-k approximation.

    python benchmarks/distill_memory.py                          # 4 rows x 512 tokens, CPU
    python benchmarks/distill_memory.py --rows 8 --length 1024 --chunk 512
    python benchmarks/distill_memory.py --top-k-error            # the top-k table of the README

Memory: each variant runs in its own subprocess (so neither inherits the other's allocator
high-water mark) and reports that process's peak resident memory (``ru_maxrss``) minus its
resident memory just before the step, with glibc's malloc serving large allocations by mmap so
that freed tensors leave the resident set, or ``torch.cuda.max_memory_allocated`` on a GPU. The step
is the teacher's forward (no gradient), the student's forward, the generalized JSD (beta 0.5)
on the completion tokens (the last 3/4 of each row) and the backward pass:

- ``naive``: both models' full ``(B, T, V)`` logits, then the divergence at the completion
  positions;
- ``chunked``: posttrain's path (``posttrain.models.distill``): the teacher keeps its hidden
  states at the completion positions only, and the two LM heads run side by side over chunks of
  ``--chunk`` positions under activation checkpointing.

Top-k error: teacher distributions with Zipf-shaped probabilities ``p_i ~ i^-s`` over a 32k
vocabulary (random token order), ``s`` set so that the teacher's entropy is low, medium or high,
and students whose logits are the teacher's plus Gaussian noise; for each divergence and ``k``,
the relative error ``|D_k - D| / D`` (median and 90th percentile over positions) and the
teacher's probability mass outside its top k. Synthetic distributions: a real teacher's numbers
depend on its own tails; measure yours with ``posttrain.losses.distill.divergence_from_logits``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB = 32_000
STUDENT = {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 1024}
TEACHER = {"hidden_size": 512, "num_layers": 4, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 2048}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _llama(size: dict, device: str, length: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=size["hidden_size"], num_hidden_layers=size["num_layers"],
                         num_attention_heads=size["num_heads"], num_key_value_heads=size["num_kv_heads"],
                         intermediate_size=size["intermediate_size"], max_position_embeddings=length, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(device)


def one_step(rows: int, length: int, variant: str, chunk: int) -> dict:
    import torch

    from posttrain.losses.distill import DivergenceOptions, divergence_from_logits
    from posttrain.models.distill import DistillationStudent, freeze_teacher, teacher_states

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student_model = _llama(STUDENT, device, length)
    teacher_model = _llama(TEACHER, device, length)
    teacher = freeze_teacher(teacher_model)
    ids = torch.randint(0, VOCAB, (rows, length), device=device)
    inputs = {"input_ids": ids, "position_ids": None, "attention_mask": None}
    columns = torch.arange(length // 4, length, device=device)  # the completion: last 3/4 of each row
    positions = (torch.arange(rows, device=device).unsqueeze(1) * length + columns).reshape(-1)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    start = time.perf_counter()
    if variant == "naive":
        with torch.no_grad():
            teacher_logits = teacher_model(input_ids=ids).logits
        student_logits = student_model(input_ids=ids).logits
        flat = lambda logits: logits.reshape(-1, VOCAB).index_select(0, positions - 1)  # noqa: E731
        divergence = divergence_from_logits(flat(student_logits), flat(teacher_logits), beta=0.5).divergence
    else:
        student = DistillationStudent(student_model, chunk_size=chunk)
        states, head = teacher_states(teacher, inputs, positions)
        divergence = student(**inputs, positions=positions, teacher_states=states, teacher_head=head, options=DivergenceOptions(0.5)).divergence
    loss = divergence.mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds = time.perf_counter() - start
    return {"variant": variant, "chunk": chunk, "peak_bytes": peak, "seconds": seconds, "loss": loss.item(), "device": device}


def _child_environment() -> dict:
    """This environment, with glibc's malloc told to serve every allocation over 256 KiB by mmap:
    by default the threshold grows with the sizes freed, freed tensors stay in the heap, and the
    resident memory then counts the allocator's cache (measured: 1.2 GiB for the chunked step
    whose live tensors peak near 0.5 GiB) instead of the tensors alive at once."""
    import os

    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}


def memory_comparison(args) -> dict:
    results = {}
    for variant in ("naive", "chunked"):
        command = [sys.executable, __file__, "--rows", str(args.rows), "--length", str(args.length), "--chunk", str(args.chunk), "--child", variant]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=_child_environment()).stdout.strip().splitlines()[-1]
        results[variant] = json.loads(output)
    naive, chunked = results["naive"], results["chunked"]
    logits_mib = args.rows * args.length * VOCAB * 4 / 2**20
    print(f"Distillation step (JSD beta 0.5), student Llama {STUDENT['num_layers']} x {STUDENT['hidden_size']}, teacher "
          f"{TEACHER['num_layers']} x {TEACHER['hidden_size']}, vocab {VOCAB}, {args.rows} rows x {args.length} tokens (3/4 completion) "
          f"on {naive['device']}; one fp32 copy of one model's full logits = {logits_mib:.0f} MiB")
    for name, result in (("both full logits", naive), (f"chunked ({args.chunk} positions)", chunked)):
        print(f"  {name:<28} peak {result['peak_bytes'] / 2**20:8.0f} MiB   {result['seconds']:6.2f} s   loss {result['loss']:.6f}")
    ratio = chunked["peak_bytes"] / naive["peak_bytes"]
    print(f"  chunked / naive peak: {ratio:.2f}   time: {chunked['seconds'] / naive['seconds']:.2f}")
    return {"naive": naive, "chunked": chunked, "peak_ratio": ratio, "logits_mib": logits_mib}


def _zipf_logits(positions: int, exponent: float, generator):
    import torch

    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float64)
    base = -exponent * ranks.log()
    order = torch.stack([torch.randperm(VOCAB, generator=generator) for _ in range(positions)])
    return base[order]


def top_k_error(positions: int = 64, seed: int = 0) -> list[dict]:
    """Relative error of each divergence under teacher top-k (see the module docstring)."""
    import torch

    from posttrain.losses.distill import divergence_from_logits

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label, exponent in (("low", 3.0), ("medium", 2.0), ("high", 1.5)):
        teacher = _zipf_logits(positions, exponent, generator)
        student = teacher + torch.randn(teacher.shape, generator=generator, dtype=torch.float64)
        probs = torch.softmax(teacher, -1)
        entropy = float(-(probs * probs.log()).sum(-1).mean())
        for beta, name in ((0.0, "forward KL"), (0.5, "JSD 0.5"), (1.0, "reverse KL")):
            exact = divergence_from_logits(student, teacher, beta=beta).divergence
            for k in (4, 16, 64, 512):
                approx = divergence_from_logits(student, teacher, beta=beta, teacher_top_k=k).divergence
                error = ((approx - exact).abs() / exact).sort().values
                outside = 1 - probs.topk(k, dim=-1).values.sum(-1)
                rows.append({"entropy": label, "teacher_entropy_nats": round(entropy, 2), "divergence": name, "k": k,
                             "mass_outside_top_k": float(outside.mean()), "median_relative_error": float(error[len(error) // 2]),
                             "p90_relative_error": float(error[int(0.9 * (len(error) - 1))])})
    print(f"{'teacher entropy':<20}{'divergence':<12}{'k':>6}{'mass outside':>14}{'median err':>12}{'p90 err':>10}")
    for row in rows:
        label = f"{row['entropy']} ({row['teacher_entropy_nats']:.2f} nats)"
        print(f"{label:<20}{row['divergence']:<12}{row['k']:>6}{row['mass_outside_top_k']:>14.4f}"
              f"{row['median_relative_error']:>12.4f}{row['p90_relative_error']:>10.4f}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256, help="positions per head chunk of the chunked variant")
    parser.add_argument("--top-k-error", action="store_true", help="measure the teacher top-k approximation instead")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", choices=("naive", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_step(args.rows, args.length, args.child, args.chunk)))
        return 0
    results = top_k_error() if args.top_k_error else memory_comparison(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
