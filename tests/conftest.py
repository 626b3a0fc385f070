"""Shared fixtures: the offline tokenizers and models of ``posttrain.testing``.

Fixtures are cached on disk by ``posttrain.testing.fixture_path``; tests point that cache at a
per-session temporary directory so they never depend on (or pollute) the user's cache.

Writing a learning test ("did it learn?", e.g. for GRPO or PPO)? Follow the standard in
tests/README.md: sweep training seeds and thread counts first (benchmarks/learning_sweep.py), set
thresholds from the measured spread with the range written beside each one, take the seed from
POSTTRAIN_TEST_SEED, and keep each test under ~90 s.
"""

from __future__ import annotations

import os

import pytest

from posttrain import testing


@pytest.fixture(scope="session", autouse=True)
def _fixture_cache(tmp_path_factory):
    if "POSTTRAIN_FIXTURES" not in os.environ:
        os.environ["POSTTRAIN_FIXTURES"] = str(tmp_path_factory.mktemp("fixtures"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    yield


@pytest.fixture(scope="session")
def tokenizers():
    """One in-memory tokenizer per kind: ``tokenizers["chatml"]`` etc."""
    return {kind: testing.build_tokenizer(kind) for kind in testing.TOKENIZER_KINDS}


@pytest.fixture(scope="session")
def chatml(tokenizers):
    return tokenizers["chatml"]


@pytest.fixture(scope="session")
def model_path():
    """``model_path("llama")`` / ``model_path("qwen2-small")``: a saved fixture directory."""
    return lambda name: str(testing.fixture_path(name))


@pytest.fixture
def first_step_gradients(monkeypatch):
    """``first_step_gradients(train)`` runs ``train()`` and returns ``{name: gradient}`` as the first
    optimizer step of that run applied them (after accumulation, before clipping's effect on the
    step is visible in the weights)."""
    from posttrain.train import loop

    def capture(train) -> dict:
        captured: dict = {}
        original = loop.build_optimizer

        def recording_optimizer(module, cfg):
            optimizer = original(module, cfg)
            step = optimizer.step

            def record_then_step(*args, **kwargs):
                if not captured:
                    captured.update({n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None})
                return step(*args, **kwargs)

            optimizer.step = record_then_step
            return optimizer

        monkeypatch.setattr(loop, "build_optimizer", recording_optimizer)
        try:
            train()
        finally:
            monkeypatch.setattr(loop, "build_optimizer", original)
        return captured

    return capture


@pytest.fixture
def kill_at():
    """``kill_at(step)``: a trainer callback that raises ``RuntimeError("killed at step <step>")``
    once optimizer step ``step`` is done, like a crash in the middle of a run."""

    def make(step: int):
        def callback(trainer, state):
            if state.step == step:
                raise RuntimeError(f"killed at step {step}")

        return callback

    return make
