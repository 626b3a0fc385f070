"""Data parallelism through accelerate, on CPU: two processes with 4 rows each train exactly as
one process with 8 rows (same global batch), for SFT (loss normalised by the loss tokens of all
processes), DPO with reference log-probs precomputed in shards and gathered, KTO (the KL
reference point z0 is averaged over all processes), a reward model (min / max metrics) and GRPO
on the same scripted experience (advantages scaled by the std over both processes' rewards), and PPO
on it (advantages whitened and the adaptive KL coefficient moved with both processes' statistics), and
distillation (a token mean over both processes' completion tokens). The
final model is gathered with ``accelerator.get_state_dict`` and saved once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from posttrain.testing import TRAINED_WEIGHTS_REL_TOLERANCE, assert_tensors_close_to_scale

from distributed_worker import ALGORITHMS, STEPS, run_all

WORKER = Path(__file__).with_name("distributed_worker.py")


def _weights(path: Path, algorithm: str = "sft") -> dict[str, torch.Tensor]:
    loader = AutoModelForSequenceClassification if algorithm == "rm" else AutoModelForCausalLM
    return loader.from_pretrained(path).state_dict()


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_path):
    model, classifier = model_path("llama"), model_path("classifier-llama")
    one, two = tmp_path_factory.mktemp("one-process"), tmp_path_factory.mktemp("two-processes")
    run_all(str(one), 8, model, classifier)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(two), "4", model, classifier]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return one, two, result.stdout + result.stderr


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_processes_match_one_with_the_same_global_batch(runs, algorithm, model_path):
    one, two, log = runs
    assert "2 process(es)" in log
    expected, actual = _weights(one / algorithm / "final", algorithm), _weights(two / algorithm / "final", algorithm)
    start = _weights(Path(model_path("classifier-llama" if algorithm == "rm" else "llama")), algorithm)
    assert any(not torch.equal(expected[n], start[n]) for n in expected)  # training moved the weights
    # 3 AdamW steps on gradients summed in another order (tests/README.md, "Comparing floats", rule 2)
    assert_tensors_close_to_scale(actual, expected, rel=TRAINED_WEIGHTS_REL_TOLERANCE)
    for ours, theirs in zip(_metrics(two / algorithm), _metrics(one / algorithm), strict=True):
        for name in ("loss", "rewards/min", "rewards/max", "rewards/chosen", "reward", "advantages/max"):
            if name in theirs:
                assert ours[name] == pytest.approx(theirs[name], abs=1e-5), name
    assert len(_metrics(two / algorithm)) == STEPS


def test_reference_log_probs_are_cached_once_for_both_processes(runs):
    _, two, log = runs
    assert len(list((two / "cache").glob("*.pt"))) == 1
    assert log.count("computed reference log-probs") == 1  # printed by the main process only
