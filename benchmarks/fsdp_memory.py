"""What each process holds for training under FSDP2: parameters, gradients and AdamW state, on 1
process (unsharded) and sharded over 2 and 4 processes (CPU, gloo).

    python benchmarks/fsdp_memory.py                          # 1, 2, 4 processes; a 42M-parameter Llama
    python benchmarks/fsdp_memory.py --processes 1,2 --json fsdp_memory.json

Each setting is one real SFT run of ``posttrain`` (``fsdp: true`` on several processes, launched
with ``torchrun``), two optimizer steps on synthetic rows. Just before the second optimizer step
every process counts the bytes of the tensors it holds: its parameters and their gradients
(a sharded parameter's local shard, ``DTensor.to_local()``), and, just after, AdamW's
``exp_avg`` / ``exp_avg_sq`` / ``step``. Those are exact byte counts, not process sizes, so
they show what sharding saves without the noise of the allocator, the libraries and the
activations. The peak resident memory of each process (``ru_maxrss``) is reported beside them:
it includes one gathered block at a time, the gathered root unit (embeddings, tied head), the
activations, Python and torch themselves.

The model is a Llama of 8 blocks, hidden size 512 and a 32k vocabulary with tied embeddings
(41.7M parameters: 167 MB of float32 weights, 667 MB with gradients and AdamW state).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 1376, "max_positions": 512}
VOCAB = 32_000


def _bytes(tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=SIZE["hidden_size"], num_hidden_layers=SIZE["num_layers"], num_attention_heads=SIZE["num_heads"],
        num_key_value_heads=SIZE["num_kv_heads"], intermediate_size=SIZE["intermediate_size"], max_position_embeddings=SIZE["max_positions"],
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def child(out: str) -> None:
    """One process of a run: train two steps and write this process's byte counts to ``out``."""
    from posttrain import SFTConfig, SFTTrainer
    from posttrain.testing import build_tokenizer
    from posttrain.train import loop

    counts: dict = {}
    original = loop.build_optimizer

    def counting_optimizer(module, config):
        optimizer = original(module, config)
        step = optimizer.step

        def count_then_step(*args, **kwargs):
            params = list(module.parameters())
            counts["parameters"] = sum(_bytes(p) for p in params)
            counts["gradients"] = sum(_bytes(p.grad) for p in params if p.grad is not None)
            result = step(*args, **kwargs)
            counts["optimizer"] = sum(_bytes(v) for state in optimizer.state.values() for v in state.values() if hasattr(v, "numel"))
            return result

        optimizer.step = count_then_step
        return optimizer

    loop.build_optimizer = counting_optimizer
    tokenizer = build_tokenizer()
    rows = [{"text": " ".join(["the model reads a few words and learns what comes next"] * 6)} for _ in range(16)]
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="fsdp-memory-"), per_device_train_batch_size=8 // processes, max_steps=2,
        progress_bar=False, logging_steps=0, save_final_model=False, fsdp=processes > 1, learning_rate=1e-4,
    )
    trainer = SFTTrainer(_model(tokenizer), config, tokenizer=tokenizer, train_dataset=rows)
    trainer.train()
    counts["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    counts["total"] = counts["parameters"] + counts["gradients"] + counts["optimizer"]
    rank = int(os.environ.get("RANK", "0"))
    Path(out).joinpath(f"rank-{rank}.json").write_text(json.dumps(counts))


def measure(processes: int) -> dict:
    """Run one setting; per-process figures (the largest over processes)."""
    with tempfile.TemporaryDirectory() as out:
        start = [sys.executable, __file__]
        if processes > 1:
            start = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), __file__]
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([*start, "--child", out], env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise SystemExit(f"{processes} process(es) failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank-*.json"))]
    return {"processes": processes, **{key: max(r[key] for r in ranks) for key in ranks[0]}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts (1 is the unsharded baseline)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    counts = [int(n) for n in args.processes.split(",")]
    results = [measure(n) for n in counts]
    base = next((r for r in results if r["processes"] == 1), None)
    mib = 2**20
    print(f"{'processes':>9} {'params MiB':>10} {'grads MiB':>10} {'AdamW MiB':>10} {'total MiB':>10} {'of 1 proc':>9} {'peak RSS MiB':>12}")
    for r in results:
        share = f"{r['total'] / base['total']:.3f}" if base else "-"
        print(f"{r['processes']:>9} {r['parameters'] / mib:>10.1f} {r['gradients'] / mib:>10.1f} {r['optimizer'] / mib:>10.1f} "
              f"{r['total'] / mib:>10.1f} {share:>9} {r['peak_rss'] / mib:>12.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": {**SIZE, "vocab_size": VOCAB}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
