"""On-policy distillation learns (issue 19, must-show 1): the noisy start (the SFT demo's model
after 100 steps on demonstrations often one too high) samples its own answers and learns the
teacher's distributions on them, the teacher being the SFT demo's model itself; held-out greedy
accuracy rises by at least 50 points. The recipe is the demo's (``posttrain demo --algorithm
distill``: :func:`posttrain.demo.distill_config`)."""

from __future__ import annotations

from posttrain.demo import stage


def test_on_policy_distillation_recovers_the_teacher(demo_run, noisy_start, tmp_path, learning_seed):
    _, _, teacher = demo_run
    start_path, start = noisy_start
    trainer, after = stage(
        "distill", start_path, str(tmp_path / "distill"), seed=learning_seed, teacher=teacher, progress_bar=False, logging_steps=0,
        save_final_model=False,
    )
    print(f"distill: {start.accuracy:.1%} -> {after.accuracy:.1%} held-out")  # pytest -rP shows it
    assert trainer.config.lmbda == 1.0  # every batch the student's own samples
    # measured 98.5-99.5% after (+86 to +87 points) over training seeds 0-4 x 1, 2 threads from the
    # seed-0 noisy start (12.5%), and 12.5% -> 99.5% for the whole pipeline at seed 0, 1 thread;
    # noisy starts span 10.5-26.5% (README, Measured results), so the issue's +50 points leaves
    # room at the highest start, and the demo's promise (90%) is checked with it
    assert after.accuracy >= start.accuracy + 0.5
    assert after.accuracy >= 0.9
    assert after.eos_rate >= 0.95  # measured 100% in every run
