"""Does every demo learn whatever the seed and thread count? The spread behind every learning claim.

    python benchmarks/learning_sweep.py                      # all demos x seeds 0-4 x 1, 2 threads
    python benchmarks/learning_sweep.py --algorithms sft --seeds 0 1 2 --threads 1 --jobs 2
    python benchmarks/learning_sweep.py --algorithms tools tools_ppo   # the tool-use demo (its own start)
    python benchmarks/learning_sweep.py --algorithms tools --tool-start outputs/demo-tools/sft/final   # its GRPO stage only
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/learning_sweep.py --algorithms sft   # another kind of CPU

Each (training seed, thread count) runs the demo recipes of ``posttrain.demo`` in a fresh
subprocess, so its thread count (``OMP_NUM_THREADS`` and ``torch.set_num_threads``) really applies
and no run inherits another's state. ``sft`` is ``make demo``: held-out greedy exact match of the
untrained model ("before"), then of the trained one. ``noisy`` is the start of the other demos:
that SFT model trained on for a few steps on demonstrations often one too high ("after" is where
it lands; it must stay at most 50%). ``dpo``, ``kto``, ``grpo``, ``ppo``, ``distill`` are
``posttrain demo --algorithm ...``: their stage from the noisy start, "before" being the start's
accuracy (``distill``'s teacher is the SFT model).
"learned" compares "after" with the promise the demo prints. ``tools`` is ``posttrain demo
--algorithm tools`` (its own start: SFT on tool-use demonstrations, then GRPO with a ``multiply``
tool; accuracy of sampled episodes, "learned" when it rose by the demo's promised gain and the
share of episodes calling the tool rose), ``tools_ppo`` the same start then PPO; the column "EOS
rate" holds their share of episodes calling the tool. ``--tool-start`` sweeps only their online
stage, every run from that saved start (the start of ``posttrain demo --algorithm tools`` is under
its output directory's ``sft/final``), as the learning tests run it at one ``POSTTRAIN_TEST_SEED``.

Prints one JSON line per run as it finishes, then a table and each recipe's range; ``--jsonl``
appends the lines to a file. ``wall_s`` depends on the machine's load (the load average at the
start and end of each run is in its line, ``cpu_s`` is the process's CPU time); ``--jobs`` runs
that many subprocesses at once, for a busy machine, at the cost of meaningful wall times. The
fixture model's initialisation is fixed; ``seed`` is the training seed (data order and all the
loop seeds).
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
from concurrent.futures import ThreadPoolExecutor

ALGORITHMS = ("sft", "noisy", "dpo", "kto", "grpo", "ppo", "distill", "tools", "tools_ppo")
TOOL_RECIPES = {"tools": "grpo", "tools_ppo": "ppo"}


class _Clock:
    """Wall and CPU seconds since construction (or since :meth:`split`)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def split(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def _row(algorithm: str, before: float, after: float, eos_rate: float, promise: float, seconds: tuple[float, float]) -> dict:
    return {
        "algorithm": algorithm,
        "accuracy_before": before,
        "accuracy_after": after,
        "eos_rate_after": eos_rate,
        "learned": after >= promise,
        "wall_s": round(seconds[0], 1),
        "cpu_s": round(seconds[1], 1),
    }


def child(algorithms: list[str], seed: int, threads: int, tool_start: str | None = None) -> list[dict]:
    """Run the demos in this process (the subprocess side); one row per algorithm.

    The SFT demo runs first (always: the noisy start continues from its model); the other
    algorithms each run their stage from one noisy start. A stage's time is its own; the SFT
    demo's and the noisy start's are in their own rows ("noisy" is the start itself).
    """
    import torch

    from posttrain import demo

    torch.set_num_threads(threads)
    quiet = {"seed": seed, "progress_bar": False, "logging_steps": 0}
    rows = tool_rows([name for name in algorithms if name in TOOL_RECIPES], quiet, tool_start)
    algorithms = [name for name in algorithms if name not in TOOL_RECIPES]
    if not algorithms:
        return _tag(rows, seed)
    with tempfile.TemporaryDirectory(prefix="sweep-") as output_dir:
        clock = _Clock()
        result = demo.run_demo(output_dir + "/sft", console=_quiet_console(), **quiet)
        figures = (result["accuracy_before"], result["accuracy_after"], result["eos_rate_after"])
        rows.append(_row("sft", *figures, demo.SFT_PROMISE, clock.split()))
        stages = [name for name in algorithms if name != "sft"]
        if stages:
            base = output_dir + "/sft/final"
            path, start = demo.noisy_sft_start(output_dir + "/noisy", console=_quiet_console(), base=base, **quiet)
            # the start promises nothing but room to improve: "learned" here means "landed at most 50%"
            rows.append(_row("noisy", result["accuracy_after"], start.accuracy, start.eos_rate, 0.0, clock.split()))
            rows[-1]["learned"] = start.accuracy <= 0.5 and start.eos_rate >= 0.95
        for name in stages:
            # distillation's teacher is the SFT demo's model
            _, after = demo.stage(name, path, f"{output_dir}/{name}", teacher=base, **quiet, save_final_model=False)
            rows.append(_row(name, start.accuracy, after.accuracy, after.eos_rate, demo.STAGE_PROMISE[name], clock.split()))
    wanted = set(algorithms) | ({"noisy"} if stages else set()) | set(TOOL_RECIPES)  # the start of every stage asked for
    return _tag([row for row in rows if row["algorithm"] in wanted], seed)


def _tag(rows: list[dict], seed: int) -> list[dict]:
    import torch

    for row in rows:
        row.update(seed=seed, threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability())
    return rows


def tool_rows(recipes: list[str], quiet: dict, start_path: str | None = None) -> list[dict]:
    """The tool-use demo's start (or the one saved at ``start_path``), then each asked stage
    (GRPO, PPO) from it; "before" is the start's accuracy of sampled episodes, the EOS-rate column
    the share calling the tool; ``start_copying`` / ``after_copying`` where tool-calling episodes
    went wrong (:meth:`~posttrain.tasks.tool_use.ToolEvalResult.copying`)."""
    from posttrain import demo_tools

    rows = []
    if not recipes:
        return rows
    with tempfile.TemporaryDirectory(prefix="sweep-tools-") as output_dir:
        clock = _Clock()
        if start_path is None:
            path, start, copy_rounds = demo_tools.tool_start(output_dir + "/sft", **quiet)
        else:
            path, start, copy_rounds = start_path, demo_tools.evaluate_saved(start_path), None
        clock.split()  # the start's time is in no row: every stage's own follows
        for name in recipes:
            _, after = demo_tools.tool_stage(TOOL_RECIPES[name], path, f"{output_dir}/{name}", **quiet, save_final_model=False)
            row = _row(name, start.accuracy, after.accuracy, after.tool_use, 0.0, clock.split())
            row.update(start_copying=start.copying(), after_copying=after.copying(), copy_rounds=copy_rounds)
            row.update(tool_use_before=start.tool_use, learned=after.accuracy - start.accuracy >= demo_tools.TOOLS_PROMISE_GAIN and after.tool_use > start.tool_use)
            rows.append(row)
    return rows


def _quiet_console():
    from rich.console import Console

    return Console(file=io.StringIO())


def spawn(algorithms: list[str], seed: int, threads: int, tool_start: str | None = None) -> list[dict]:
    """Run :func:`child` in a fresh Python process with ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load_start = os.getloadavg()[0]
    command = [sys.executable, __file__, "--child", ",".join(algorithms), str(seed), str(threads)]
    command += ["--tool-start", tool_start] if tool_start else []
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{algorithms} seed {seed} threads {threads} failed:\n{completed.stderr[-3000:]}")
    rows = json.loads(completed.stdout.strip().splitlines()[-1])
    for row in rows:
        row.update(load_start=round(load_start, 2), load_end=round(os.getloadavg()[0], 2))
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="held-out greedy exact match (200 problems) per training seed and thread count")
    for column in ("recipe", "seed", "threads", "before", "after", "EOS rate", "wall s", "CPU s", "load"):
        table.add_column(column, justify="left" if column == "recipe" else "right")
    for row in rows:
        after = f"{row['accuracy_after']:.1%}"
        table.add_row(
            row["algorithm"], str(row["seed"]), str(row["threads"]), f"{row['accuracy_before']:.1%}",
            after if row["learned"] else f"[red]{after}[/]", f"{row['eos_rate_after']:.1%}",
            f"{row['wall_s']:.0f}", f"{row['cpu_s']:.0f}", f"{row['load_start']:.1f}-{row['load_end']:.1f}",
        )
    console = Console(highlight=False)
    console.print(table)
    for algorithm in dict.fromkeys(row["algorithm"] for row in rows):
        mine = [row for row in rows if row["algorithm"] == algorithm]
        befores = [row["accuracy_before"] for row in mine]
        afters = [row["accuracy_after"] for row in mine]
        console.print(
            f"{algorithm}: {len(mine)} runs ({mine[0]['cpu_capability']}), before {min(befores):.1%}-{max(befores):.1%}, "
            f"after {min(afters):.1%}-{max(afters):.1%}, {sum(not row['learned'] for row in mine)} below the demo's promise"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", choices=[name for name in ALGORITHMS if name != "noisy"], default=["sft", "dpo", "kto", "grpo", "ppo", "distill"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts")
    parser.add_argument("--jobs", type=int, default=1, help="subprocesses at once (wall times then overlap)")
    parser.add_argument("--jsonl", default=None, help="also append each run's JSON line to this file")
    parser.add_argument("--tool-start", default=None, help="tools, tools_ppo: sweep only the online stage, from this saved start")
    parser.add_argument("--child", nargs=3, metavar=("ALGORITHMS", "SEED", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        algorithms, seed, threads = args.child
        print(json.dumps(child(algorithms.split(","), int(seed), int(threads), args.tool_start)))
        return 0
    order = {name: index for index, name in enumerate(ALGORITHMS)}
    algorithms = sorted(set(args.algorithms), key=order.get)
    rows = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = [pool.submit(spawn, algorithms, seed, threads, args.tool_start) for seed in args.seeds for threads in args.threads]
        for run in runs:
            for row in run.result():
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
    print_table(sorted(rows, key=lambda row: (order[row["algorithm"]], row["seed"], row["threads"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
