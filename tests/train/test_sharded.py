"""Sharded training (FSDP2) on CPU: 2 and 4 gloo processes, each holding 1/N of every parameter,
train every trainer (SFT with gradient checkpointing, a reward model, DPO with a sharded
reference, KTO, GRPO, PPO's policy and critic; on 2 processes also SFT with LoRA and DPO with a
precomputed reference) as one unsharded process does with the same global batch; a sharded run killed after a checkpoint and resumed ends
exactly where an uninterrupted one does; its checkpoint resumes on fewer processes (4 -> 2,
2 -> 1) to float tolerance.

Runs (tests/train/sharded_worker.py): one process in-process, 8 rows per micro-batch, unsharded;
``torchrun --nproc_per_node 2`` (4 rows each) and ``--nproc_per_node 4`` (2 rows each), sharded.

Tolerance (tests/README.md, "Comparing floats"). Sharded and unsharded runs sum the same numbers
in another order (gradients reduce-scattered over processes, AdamW on shards), so they agree to
float32 rounding, amplified by the steps that follow. Measured over the 4 steps of every case on
2 and 4 processes, with AVX-512 and with AVX2 kernels (ATEN_CPU_CAPABILITY=avx2), the reference
with 1 and 2 threads: the largest weight difference was 1.6e-4 of its tensor's largest value (the
reward model at 4 processes under AVX2, whose gradient norm grows 10x in 4 steps; 1.2e-4 with
AVX-512; 2.7e-5 at most in every other case), the largest loss difference 1.6e-6 of the loss.
The test allows 5e-4 and 1e-5, and checks that every case moved some weight 20 times further
than that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.tasks import ArithmeticTask
from posttrain.testing import TRAINED_WEIGHTS_REL_TOLERANCE, assert_tensors_close_to_scale

from sharded_worker import CASES, SAVE_STEPS, STEPS, run_cases

# 4 processes train every trainer; LoRA and the precomputed reference, which shard as the others
# do, run on 2 only (the suite's time)
CASES_ON = {2: CASES, 4: ("sft", "rm", "dpo-model", "kto", "grpo", "ppo")}

WORKER = Path(__file__).with_name("sharded_worker.py")
WEIGHT_TOLERANCE = TRAINED_WEIGHTS_REL_TOLERANCE  # of each tensor's largest magnitude; measured up to 1.6e-4 (docstring)
LOSS_TOLERANCE = 1e-5  # relative; measured up to 1.6e-6


def launch(processes: int, out: Path, batch: int, models: tuple[str, str], *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """The worker under ``torchrun --nproc_per_node processes`` (plain Python for one process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = [sys.executable, str(WORKER)]
    if processes > 1:
        start = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), str(WORKER)]
    return subprocess.run([*start, str(out), str(batch), *models, *args], env=env, capture_output=True, text=True, timeout=timeout)


def checked(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_path):
    """``{processes: run directory}`` for 1 (unsharded), 2 and 4 processes, the same 16 rows."""
    models = (model_path("llama"), model_path("classifier-llama"))
    out = {n: tmp_path_factory.mktemp(f"sharded-{n}") for n in (1, 2, 4)}
    run_cases(str(out[1]), 8, *models)
    for n in (2, 4):
        checked(launch(n, out[n], 8 // n, models, *CASES_ON[n]))
    return out


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    (weights,) = (run / "final").glob("*.safetensors")  # a model or a LoRA adapter
    return load_file(weights)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_close_losses(actual: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for ours, theirs in zip(actual, expected):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=LOSS_TOLERANCE, abs=1e-12), ours["step"]


def reports(run: Path, processes: int) -> list[dict]:
    return [json.loads((run / f"report-{rank}.json").read_text()) for rank in range(processes)]


@pytest.mark.parametrize(("case", "processes"), [(case, n) for n in (2, 4) for case in CASES_ON[n]])
def test_sharded_training_matches_one_process(runs, case, processes):
    expected, actual = final_weights(runs[1] / case), final_weights(runs[processes] / case)
    assert_tensors_close_to_scale(actual, expected, rel=WEIGHT_TOLERANCE)
    assert_close_losses(metrics(runs[processes] / case), metrics(runs[1] / case))
    assert len(metrics(runs[processes] / case)) == STEPS
    # the tolerance is far below what training moved: some tensor moved 20x its tolerance or more
    assert max(_moved_over_tolerance(case, expected)) > 20


def _moved_over_tolerance(case: str, trained: dict[str, torch.Tensor]) -> list[float]:
    """Per tensor, how far training moved it from its start, in units of its tolerance (LoRA: the
    B matrices, which start at 0)."""
    from posttrain.testing import fixture_path

    if case == "sft-lora":
        start = {name: torch.zeros_like(value) for name, value in trained.items() if "lora_B" in name}
    else:
        start = load_file(fixture_path("classifier-llama" if case == "rm" else "llama") / "model.safetensors")
    return [
        ((trained[name] - begin).abs().max() / (WEIGHT_TOLERANCE * trained[name].abs().max())).item()
        for name, begin in start.items() if name in trained
    ]


@pytest.mark.parametrize("processes", [2, 4])
def test_every_parameter_is_a_dtensor_sharded_over_all_processes(runs, processes):
    """What plain data parallelism (DDP) would fail: each process holds 1/N of every trained
    parameter (and of the reference policy's) as a DTensor sharded along dim 0."""
    per_rank = reports(runs[processes], processes)
    for case in CASES_ON[processes]:
        for kind in ("module", "reference"):
            tables = [report[case].get(kind) for report in per_rank]
            if tables[0] is None:
                assert case not in ("dpo-model", "kto", "grpo", "ppo"), f"{case}: no sharded reference recorded"
                continue
            for rank, table in enumerate(tables):
                plain = [row[0] for row in table if not (row[1] and row[2] == processes and row[3] == "(Shard(dim=0),)")]
                assert not plain, f"{case} {kind} rank {rank}: not sharded: {plain[:3]}"
            held = [sum(row[4] for row in table) for table in tables]
            whole = sum(row[5] for row in tables[0])
            assert sum(held) == whole, f"{case} {kind}: the shards add up to {sum(held)} of {whole} elements"
            assert max(held) <= whole / processes + 64 * len(tables[0]), f"{case} {kind}: one process holds {max(held)} of {whole}"


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_rollouts_generate_from_the_whole_weights(runs, processes):
    """The weights gathered for generation are the trained model's: sampling from them draws the
    same tokens as sampling (same seed) from final/ loaded on one process."""
    for rank, report in enumerate(reports(runs[processes], processes)):
        generation = report["grpo"]["generation"]
        assert generation["gathered"] == generation["final"], f"rank {rank}"
        assert len({tuple(ids) for ids in generation["gathered"]}) > 1  # sampled, not one repeated reply


def test_final_model_is_an_ordinary_checkpoint_and_ties_the_head(runs):
    """final/ of a sharded run loads with from_pretrained on one process, with the LM head tied to
    the embeddings (saved once, as an unsharded run saves it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs[2] / "sft" / "final")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert final_weights(runs[2] / "sft").keys() == final_weights(runs[1] / "sft").keys()


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def resumed(runs, tmp_path_factory, model_path):
    """The SFT case (checkpoint at step SAVE_STEPS of STEPS): killed on 2 processes after step
    SAVE_STEPS + 1 and resumed on 2; the 2-process run's checkpoint resumed on 1 process (a
    world of size 1), the 4-process run's on 2. Returns the root and the killed job's result."""
    models = (model_path("llama"), model_path("classifier-llama"))
    root = tmp_path_factory.mktemp("sharded-resume")
    killed = launch(2, root / "cut", 4, models, "sft", "--die-after", str(SAVE_STEPS + 1))
    saved = f"checkpoints/checkpoint-{SAVE_STEPS}"
    also = f"--also={root / 'four-to-two'}={runs[4] / 'sft' / saved}"
    checked(launch(2, root / "cut", 4, models, "sft", "--resume-from", "latest", also))
    checked(launch(1, root / "two-to-one", 8, models, "sft", "--fsdp", "--resume-from", str(runs[2] / "sft" / saved)))
    return root, killed


def _results(record: dict) -> dict:
    """A metrics record without its wall-clock measurements."""
    return {k: v for k, v in record.items() if not (k.startswith("time") or k.endswith("tokens_per_second"))}


def test_checkpoints_are_sharded_with_torch_distributed_checkpoint(runs):
    for processes in (2, 4):
        checkpoint = runs[processes] / "sft" / "checkpoints" / f"checkpoint-{SAVE_STEPS}"
        assert not (checkpoint / "model.safetensors").exists()
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # one DCP file per process, and the plan
            assert sorted(p.name for p in (checkpoint / part).iterdir()) == [".metadata"] + [f"__{r}_0.distcp" for r in range(processes)]


def test_killed_sharded_run_resumes_exactly(runs, resumed):
    root, killed = resumed
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-4000:]
    assert not (root / "cut" / "sft" / "checkpoints" / f"checkpoint-{SAVE_STEPS + 1}").exists()
    cut, full = root / "cut" / "sft", runs[2] / "sft"
    expected, actual = final_weights(full), final_weights(cut)
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
    assert [_results(r) for r in metrics(cut)] == [_results(r) for r in metrics(full)]


@pytest.mark.parametrize(("name", "processes"), [("two-to-one", 2), ("four-to-two", 4)])
def test_sharded_checkpoint_resumes_on_fewer_processes(runs, resumed, name, processes):
    """Weights, AdamW state and data position come back resharded: the run ends where the one it
    was saved from ends, to the reduction-order tolerance."""
    run = resumed[0] / name / "sft"
    assert_tensors_close_to_scale(final_weights(run), final_weights(runs[processes] / "sft"), rel=WEIGHT_TOLERANCE)
    continued = metrics(run)
    assert [r["step"] for r in continued] == list(range(SAVE_STEPS + 1, STEPS + 1))
    assert_close_losses(continued, metrics(runs[processes] / "sft")[SAVE_STEPS:])


@pytest.mark.slow
def test_accelerate_launch_use_fsdp_shards_on_cpu(model_path, tmp_path):
    """The command the README gives: on a CPU machine accelerate alone would train this as plain
    DDP; posttrain shards it (and refuses FSDP version 1, accelerate's default, with the fix)."""
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in ArithmeticTask(seed=0).prompt_completion("train", 16)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    options = [f"model={model_path('llama')}", f"train_data={data}", "per_device_train_batch_size=4", "max_steps=2", "progress_bar=false"]

    def launch_cli(*flags: str, out: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2", "-m", "posttrain", "sft", *options, f"output_dir={tmp_path / out}"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    log = checked(launch_cli("--use_fsdp", "--fsdp_version", "2", out="v2"))
    assert log.count("FSDP2: parameters sharded over 2 process(es)") == 1  # printed by the main process
    assert (tmp_path / "v2" / "final" / "model.safetensors").is_file()
    refused = launch_cli("--use_fsdp", out="v1")
    assert refused.returncode != 0 and "posttrain shards with FSDP2 only. Fix: add --fsdp_version 2" in refused.stderr
