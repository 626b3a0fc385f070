"""Trains SFT, DPO (precomputed reference), KTO, a reward model, GRPO and PPO (on scripted completions, so the
experience does not depend on how it is split) and distillation (on the rows' completions) for a few steps with a given per-process
batch; run by tests/train/test_distributed.py once in-process and once under
``torchrun --nproc_per_node 2``. Not a test module itself (no ``test_`` prefix).

    python -m torch.distributed.run --nproc_per_node 2 distributed_worker.py OUT BATCH MODEL CLASSIFIER
"""

from __future__ import annotations

import sys
from pathlib import Path

from posttrain import (
    DistillationConfig,
    DistillationTrainer,
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    KTOConfig,
    KTOTrainer,
    PPOConfig,
    PPOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
)
from posttrain.tasks import ArithmeticTask
from posttrain.testing import ScriptedEngine, fixture_path

ALGORITHMS = ("sft", "dpo", "kto", "rm", "grpo", "ppo", "distill")
STEPS = 3


def _common(output_dir: Path, batch: int) -> dict:
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch,
        max_steps=STEPS,
        lr_scheduler="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        progress_bar=False,
        save_final_model=True,
        seed=3,
        # Adam turns a gradient of ~1e-9 into a full lr-sized step of its sign, so the last-bit
        # differences of a two-process all-reduce would show up as 1e-5 weight differences;
        # a larger epsilon keeps such near-zero gradients from moving weights at all.
        adam_epsilon=1e-6,
    )


def run_all(output_dir: str, batch: int, model: str, classifier: str) -> None:
    """Train each algorithm into ``output_dir/<algorithm>``; 16 rows, so 2 x 4 and 1 x 8 rows
    per step walk the same data."""
    out = Path(output_dir)
    task = ArithmeticTask(seed=1)
    # 1- and 3-turn conversations: processes hold different numbers of loss tokens, so a
    # per-process average would differ from the global one.
    sft_rows = task.conversations("train", 8, turns=1) + task.conversations("train", 8, turns=3)
    SFTTrainer(model, SFTConfig(**_common(out / "sft", batch), learning_rate=1e-3, loss_mode="assistant"), train_dataset=sft_rows).train()
    dpo = DPOConfig(**_common(out / "dpo", batch), learning_rate=1e-3, reference_mode="precomputed", ref_logps_cache_dir=str(out / "cache"))
    DPOTrainer(model, dpo, train_dataset=task.preference_pairs("train", 16)).train()
    KTOTrainer(model, KTOConfig(**_common(out / "kto", batch), learning_rate=1e-3), train_dataset=task.unpaired("train", 16)).train()
    # rewards/min and rewards/max reduce with min / max across processes, not a sum
    RewardTrainer(classifier, RewardConfig(**_common(out / "rm", batch), learning_rate=1e-3), train_dataset=task.preference_pairs("train", 16)).train()
    # groups of 4: one prompt per process per step with 2 x 4 completions, two with 1 x 8
    grpo = GRPOConfig(**_common(out / "grpo", batch), learning_rate=1e-3, num_generations=4, max_completion_length=8, scale_rewards="batch")
    GRPOTrainer(model, grpo, train_dataset=task.prompt_only("train", 16), reward_funcs=[_length_reward], rollout_engine=_scripted(model)).train()
    # PPO: rollout batches of 8 completions (2 x 4 or 1 x 8), each trained for 2 epochs; advantages
    # whitened and the adaptive KL coefficient moved with the statistics of both processes
    ppo = PPOConfig(**_common(out / "ppo", batch), learning_rate=1e-3, batch_size=batch, ppo_epochs=2, max_completion_length=8,
                    kl_coef=0.1, adap_kl_ctrl=True, kl_target=0.01, kl_horizon=16.0)
    PPOTrainer(model, ppo, train_dataset=task.prompt_only("train", 16), reward_funcs=[_length_reward], rollout_engine=_scripted(model)).train()
    # distillation on the rows' completions (lmbda=0) from a wider Qwen2 teacher: a token mean over
    # both processes' completion tokens
    distill = DistillationConfig(**_common(out / "distill", batch), learning_rate=1e-3, lmbda=0.0, max_completion_length=8)
    DistillationTrainer(model, distill, train_dataset=task.prompt_completion("train", 16), teacher_model=str(fixture_path("qwen2-small"))).train()


def _scripted(model: str) -> ScriptedEngine:
    """Scripted completions, the same on every process and in every split of the batch."""
    from transformers import AutoTokenizer

    return ScriptedEngine(AutoTokenizer.from_pretrained(model), [" 1", " 22", " 7 7 7", " 333", " 4"])


def _length_reward(completions):
    return [float(len(c)) for c in completions]


if __name__ == "__main__":
    run_all(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
