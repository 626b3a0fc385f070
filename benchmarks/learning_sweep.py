"""Does the demo learn whatever the seed and thread count? The spread behind every learning claim.

    python benchmarks/learning_sweep.py                                   # sft, dpo, kto x seeds 0-4 x 1, 2 threads
    python benchmarks/learning_sweep.py --algorithms sft --seeds 0 1 2 --threads 1
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/learning_sweep.py --algorithms sft   # another kind of CPU

Each (algorithm, training seed, thread count) runs the demo recipe of ``posttrain.demo`` in a
fresh subprocess, so its thread count (``OMP_NUM_THREADS`` and ``torch.set_num_threads``) really
applies and no run inherits another's state. ``sft`` is ``make demo`` (held-out greedy exact
match of the untrained model, then of the trained one); ``dpo`` / ``kto`` are
``posttrain demo --algorithm dpo|kto`` (accuracy of the noisy-SFT start, then after preference
learning). Prints one JSON line per run as it finishes, then a table with the range of each
algorithm; ``--jsonl`` also writes the lines to a file.

Wall seconds depend on the machine's load: the load average at the start and end of each run is
in its JSON line. The fixture model's initialisation is fixed; ``seed`` is the training seed
(data order, and everything else the loop seeds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ALGORITHMS = ("sft", "dpo", "kto")


def one_run(algorithm: str, seed: int, threads: int) -> dict:
    """Run one demo in this process (the child side) and return its figures."""
    import torch
    from rich.console import Console

    from posttrain.demo import run_demo, run_preference_demo

    torch.set_num_threads(threads)
    quiet = Console(file=io.StringIO())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"sweep-{algorithm}-") as output_dir:
        if algorithm == "sft":
            result = run_demo(output_dir, console=quiet, seed=seed, progress_bar=False)
            before = result["accuracy_before"]
        else:
            result = run_preference_demo(algorithm, output_dir, console=quiet, seed=seed, progress_bar=False)
            before = result["accuracy_sft"]
    return {
        "algorithm": algorithm,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "accuracy_before": before,
        "accuracy_after": result["accuracy_after"],
        "eos_rate_after": result["eos_rate_after"],
        "learned": result["learned"],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def spawn(algorithm: str, seed: int, threads: int) -> dict:
    """Run :func:`one_run` in a fresh Python process with ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load_start = os.getloadavg()[0]
    command = [sys.executable, __file__, "--child", algorithm, str(seed), str(threads)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{algorithm} seed {seed} threads {threads} failed:\n{completed.stderr[-3000:]}")
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    row["load_start"], row["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)
    return row


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="held-out greedy exact match (200 problems) per training seed and thread count")
    for column in ("recipe", "seed", "threads", "before", "after", "EOS rate", "wall s", "load"):
        table.add_column(column, justify="right" if column != "recipe" else "left")
    for row in rows:
        after = f"{row['accuracy_after']:.1%}"
        table.add_row(
            row["algorithm"], str(row["seed"]), str(row["threads"]), f"{row['accuracy_before']:.1%}",
            after if row["learned"] else f"[red]{after}[/]", f"{row['eos_rate_after']:.1%}",
            f"{row['wall_s']:.0f}", f"{row['load_start']:.1f}-{row['load_end']:.1f}",
        )
    console = Console(highlight=False)
    console.print(table)
    for algorithm in dict.fromkeys(row["algorithm"] for row in rows):
        mine = [row for row in rows if row["algorithm"] == algorithm]
        befores = [row["accuracy_before"] for row in mine]
        afters = [row["accuracy_after"] for row in mine]
        console.print(
            f"{algorithm}: {len(mine)} runs, before {min(befores):.1%}-{max(befores):.1%}, "
            f"after {min(afters):.1%}-{max(afters):.1%}, {sum(not row['learned'] for row in mine)} below the demo's promise"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts")
    parser.add_argument("--jsonl", default=None, help="also append each run's JSON line to this file")
    parser.add_argument("--child", nargs=3, metavar=("ALGORITHM", "SEED", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        algorithm, seed, threads = args.child
        print(json.dumps(one_run(algorithm, int(seed), int(threads))))
        return 0
    rows = []
    for algorithm in args.algorithms:
        for seed in args.seeds:
            for threads in args.threads:
                rows.append(spawn(algorithm, seed, threads))
                line = json.dumps(rows[-1])
                print(line, flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as handle:
                        handle.write(line + "\n")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
