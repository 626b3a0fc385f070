"""Peak memory of one DPO step: chunked LM head vs full logits, 32k vocabulary.

    python benchmarks/dpo_memory.py                       # 4 pairs x 512 tokens, CPU
    python benchmarks/dpo_memory.py --pairs 8 --length 1024

Each variant runs in its own subprocess (so one cannot inherit the other's allocator high-water
mark) and reports the peak resident memory of that process (``ru_maxrss``) minus its resident
memory just before the step, or ``torch.cuda.max_memory_allocated`` on a GPU. The step is
forward of 2 x pairs rows (chosen + rejected), the reference forward, the sigmoid DPO loss and
the backward pass, through ``posttrain``'s own ``TokenLogProbs``; ``--chunk 0`` computes the
full ``(2B, T, V)`` logits at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VOCAB = 32_000
SIZE = {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 1024, "max_positions": 2048}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def one_step(pairs: int, length: int, chunk: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.algorithms.reference import sequence_logps
    from posttrain.losses.preference import PreferenceLogps, preference_loss
    from posttrain.models.causal_lm import TokenLogProbs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=SIZE["hidden_size"], num_hidden_layers=SIZE["num_layers"],
                         num_attention_heads=SIZE["num_heads"], num_key_value_heads=SIZE["num_kv_heads"],
                         intermediate_size=SIZE["intermediate_size"], max_position_embeddings=SIZE["max_positions"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = TokenLogProbs(LlamaForCausalLM(config).to(device), chunk_size=chunk or 0)
    reference = TokenLogProbs(LlamaForCausalLM(config).to(device).eval().requires_grad_(False), chunk_size=chunk or 0)
    ids = torch.randint(0, VOCAB, (2 * pairs, length), device=device)
    weights = torch.zeros(2 * pairs, length, device=device)
    weights[:, length // 4 :] = 1.0  # the last 3/4 of each row is the completion
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    policy_logps = sequence_logps(policy(ids).logps, weights)
    with torch.no_grad():
        ref_logps = sequence_logps(reference(ids).logps, weights)
    logps = PreferenceLogps(policy_logps[:pairs], policy_logps[pairs:], ref_logps[:pairs], ref_logps[pairs:])
    losses, _, _ = preference_loss(logps, ["sigmoid"], beta=0.1)
    losses.mean().backward()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"chunk": chunk, "peak_bytes": peak, "loss": losses.mean().item(), "device": device}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per LM-head chunk of the chunked variant")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_step(args.pairs, args.length, args.child)))
        return 0
    results = []
    for chunk in (0, args.chunk):
        command = [sys.executable, __file__, "--pairs", str(args.pairs), "--length", str(args.length), "--child", str(chunk)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(output))
    full, chunked = results
    logits_mib = 2 * args.pairs * args.length * VOCAB * 4 / 2**20
    print(f"DPO step, Llama {SIZE['num_layers']} layers x {SIZE['hidden_size']}, vocab {VOCAB}, {args.pairs} pairs x {args.length} tokens "
          f"on {full['device']} (one fp32 copy of the full logits = {logits_mib:.0f} MiB)")
    for name, result in (("full logits", full), (f"chunked ({args.chunk} tokens)", chunked)):
        print(f"  {name:<24} peak {result['peak_bytes'] / 2**20:8.0f} MiB   loss {result['loss']:.6f}")
    print(f"  chunked / full peak: {chunked['peak_bytes'] / full['peak_bytes']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
