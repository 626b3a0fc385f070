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
def sft_first_step(first_step_gradients, model_path):
    """``sft_first_step(output_dir, rows, **overrides)``: the first-step gradients of a quiet
    one-step SFT run of the llama fixture (assistant turns, batch 3, no clipping) with
    ``overrides`` on top: the path to compare with another setting that must not change them."""
    from posttrain import SFTConfig, SFTTrainer

    def run(output_dir, rows, **overrides) -> dict:
        values = dict(
            output_dir=str(output_dir), learning_rate=1e-2, loss_mode="assistant", progress_bar=False, logging_steps=0,
            save_final_model=False, max_steps=1, max_grad_norm=0.0, per_device_train_batch_size=3, max_length=None,
        )
        values.update(overrides)
        return first_step_gradients(SFTTrainer(model_path("llama"), SFTConfig(**values), train_dataset=rows).train)

    return run


@pytest.fixture(scope="session")
def run_benchmark():
    """``run_benchmark(script, json_path, *args)``: runs ``benchmarks/<script>`` with ``--json
    json_path`` in a fresh process (offline, the repository on PYTHONPATH), asserts it exited 0
    and returns the finished process (its stdout and stderr as text)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def run(script: str, json_path, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, str(repo / "benchmarks" / script), *args, "--json", str(json_path)],
            cwd=repo, env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    return run


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


@pytest.fixture
def killed_and_resumed(kill_at):
    """``killed_and_resumed(run, step)`` -> ``(uninterrupted, resumed)`` final weights of a causal
    LM: ``run(name, **options)`` builds a trainer writing to ``<...>/<name>`` with those config
    options (and ``callbacks``); "full" trains whole, "cut" is killed after step ``step`` and then
    resumed from its latest checkpoint."""
    from transformers import AutoModelForCausalLM

    def go(run, step: int):
        full = run("full", save_final_model=True)
        full.train()
        with pytest.raises(RuntimeError, match=f"killed at step {step}"):
            run("cut", callbacks=[kill_at(step)]).train()
        resumed = run("cut", resume_from_checkpoint="latest", save_final_model=True)
        resumed.train()
        return full.model.state_dict(), AutoModelForCausalLM.from_pretrained(f"{resumed.config.output_dir}/final").state_dict()

    return go


# ---------------------------------------------------------------------- learning tests
# Expensive starts shared by the learning tests (tests/README.md): trained once per session.
# A test that uses one of them is a learning test: it is marked ``learning`` here, so it runs
# in ``make test-learning`` (which CI runs after ``make test``) and not in the default suite.
LEARNING_FIXTURES = frozenset({"demo_run", "noisy_start", "echo_reward_model", "tool_start"})


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker (-m)
def pytest_collection_modifyitems(items):
    for item in items:
        # a learning test marked slow (a recipe not yet robust enough for CI) stays in the slow tier
        if LEARNING_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.learning)


@pytest.fixture(scope="session")
def learning_seed() -> int:
    """The training seed of the learning tests: ``POSTTRAIN_TEST_SEED``, default the demo's."""
    from posttrain.demo import DEMO_SEED

    return int(os.environ.get("POSTTRAIN_TEST_SEED", DEMO_SEED))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, learning_seed):
    """The SFT demo (``posttrain.demo.run_demo``) run once: ``(its result dict, its console text,
    the trained model's path)``. test_sft_learns checks it; :func:`noisy_start` continues from it."""
    import io

    from rich.console import Console

    from posttrain.demo import run_demo

    output = tmp_path_factory.mktemp("demo-sft")
    text = io.StringIO()
    result = run_demo(str(output), console=Console(file=text, width=200), seed=learning_seed, progress_bar=False, logging_steps=0)
    return result, text.getvalue(), str(output / "final")


@pytest.fixture(scope="session")
def noisy_start(demo_run, tmp_path_factory, learning_seed):
    """``(path, held-out EvalResult)`` of the noisy start of the preference and online-RL tests
    (``posttrain.demo.noisy_sft_start`` from the SFT demo's model): it adds, but its greedy
    answer is often one too high."""
    from rich.console import Console

    from posttrain.demo import noisy_sft_start

    result, _, clean_path = demo_run
    assert result["learned"], f"the SFT demo did not learn, so there is no start to add noise to: {result}"
    output = tmp_path_factory.mktemp("noisy-sft")
    return noisy_sft_start(
        str(output), seed=learning_seed, console=Console(quiet=True), base=clean_path, progress_bar=False, logging_steps=0
    )


@pytest.fixture(scope="session")
def tool_start(tmp_path_factory, learning_seed):
    """``(path, held-out ToolEvalResult)`` of the tool-use start (``posttrain.demo_tools.tool_start``:
    SFT of the demo fixture on multiplication demonstrations that call ``multiply`` or answer
    directly), the start of the GRPO and PPO tool-use learning tests."""
    from posttrain.demo_tools import tool_start as make_start

    path, result, _ = make_start(str(tmp_path_factory.mktemp("tool-sft")), seed=learning_seed, progress_bar=False, logging_steps=0)
    return path, result


@pytest.fixture(scope="session")
def echo_reward_model(tmp_path_factory):
    """``(model, tokenizer)`` of a reward model trained on the demo task's echo pairs (the right
    answer preferred to an echoed operand; tests/algorithms/test_reward.py measures that recipe
    at 0.965-0.995 held-out pairwise accuracy, ~6 s): the reward of the RM-as-reward tests."""
    from posttrain.demo import reward_model_stage

    output = tmp_path_factory.mktemp("echo-rm")
    quiet = dict(logging_steps=0, progress_bar=False, save_final_model=False)
    trainer, _ = reward_model_stage(str(output), seed=1, **quiet)  # the pipeline demo's reward model, data order 1
    return trainer.model, trainer.tokenizer
