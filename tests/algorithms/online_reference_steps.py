"""The first optimizer steps of GRPO and PPO in five set-ups, reduced to a few numbers per step:
the logged loss, the gradient norm over all parameters, and the norm, sum and first values of the
gradients of a few named parameters. ``tests/algorithms/test_online_reference_steps.py`` compares
them with the numbers this file printed before the online half was redesigned (issue 17).

Run ``python tests/algorithms/online_reference_steps.py OUT.json [case ...]`` (offline, ~15 s)
to write them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

SCRIPTED_TEXTS = [" 1", " 22", " 7 7 7", " 333", " 4"]
# parameters whose gradients are recorded (those present in a case's module)
WATCHED = (
    "model.model.embed_tokens.weight",
    "model.model.layers.0.self_attn.q_proj.weight",
    "model.model.layers.1.mlp.down_proj.weight",
    "critic.head.weight",
    "critic.backbone.layers.0.self_attn.q_proj.weight",
)


def _length_reward(completions):
    return [float(len(c)) for c in completions]


def _common(output_dir: Path, **values) -> dict:
    base = dict(
        output_dir=str(output_dir), learning_rate=1e-3, lr_scheduler="constant", logging_steps=1, progress_bar=False,
        save_final_model=False, mixed_precision="no", seed=3, max_steps=2, max_grad_norm=0.0,
    )
    return {**base, **values}


def _summary(module: torch.nn.Module) -> dict:
    grads = {n: p.grad.detach().float() for n, p in module.named_parameters() if p.grad is not None}
    out = {"total_norm": float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])))}
    for name in WATCHED:
        for key, grad in grads.items():
            if key.endswith(name) or key == name:
                flat = grad.reshape(-1)
                out[name] = {"norm": float(torch.linalg.vector_norm(flat)), "sum": float(flat.sum()), "first": [float(v) for v in flat[:3]]}
                break
    return out


def _recording(loop_module, steps: list) -> None:
    """Wrap the optimizer the loop builds so every step's gradients are summarised first."""
    original = loop_module.build_optimizer

    def build(module, cfg):
        optimizer = original(module, cfg)
        step = optimizer.step

        def record_then_step(*args, **kwargs):
            steps.append(_summary(module))
            return step(*args, **kwargs)

        optimizer.step = record_then_step
        return optimizer

    loop_module.build_optimizer = build
    return original


def _scripted(trainer_cls, model, config, rows, **kwargs):
    # recorded with `trainer._engine = ScriptedEngine(trainer.tokenizer, SCRIPTED_TEXTS)`, the
    # way the code before the redesign took an engine
    from transformers import AutoTokenizer

    from posttrain.testing import ScriptedEngine

    engine = ScriptedEngine(AutoTokenizer.from_pretrained(model), SCRIPTED_TEXTS)
    return trainer_cls(model, config, train_dataset=rows, reward_funcs=[_length_reward], rollout_engine=engine, **kwargs)


def cases(root: Path) -> dict:
    """name -> a function that builds the trainer of that case and runs it."""
    from posttrain import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
    from posttrain.tasks import ArithmeticTask
    from posttrain.testing import fixture_path

    model = str(fixture_path("llama"))
    prompts = ArithmeticTask(seed=5).prompt_only("train", 16)

    def grpo_scripted():
        # a KL term (reference copy), an old-log-prob pass, masked truncated completions, accumulation
        config = GRPOConfig(**_common(root / "grpo_scripted", num_generations=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                      beta=0.1, num_iterations=2, max_completion_length=4, mask_truncated_completions=True))
        _scripted(GRPOTrainer, model, config, prompts).train()

    def grpo_sampled():
        # sampled from the model (the RNG path), RLOO advantages, Dr. GRPO aggregation, GSPO ratios
        config = GRPOConfig(**_common(root / "grpo_sampled", num_generations=4, per_device_train_batch_size=8, temperature=1.5,
                                      max_completion_length=6, advantage_estimator="rloo", loss_type="dr_grpo",
                                      importance_sampling_level="sequence", num_iterations=2))
        GRPOTrainer(model, config, train_dataset=prompts, reward_funcs=[_length_reward]).train()

    def ppo_scripted():
        # reference KL in the reward, adaptive controller, missing-EOS penalty, 2 mini-batches x 2 epochs
        config = PPOConfig(**_common(root / "ppo_scripted", batch_size=8, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                     ppo_epochs=2, kl_coef=0.1, adap_kl_ctrl=True, kl_target=0.5, kl_horizon=50.0,
                                     missing_eos_penalty=1.0, max_completion_length=4))
        _scripted(PPOTrainer, model, config, prompts).train()

    def ppo_sampled():
        # sampled, a critic on the policy's own trunk, whitened rewards
        config = PPOConfig(**_common(root / "ppo_sampled", batch_size=8, per_device_train_batch_size=8, ppo_epochs=2, kl_coef=0.05,
                                     critic="shared", whiten_rewards=True, temperature=1.5, max_completion_length=6))
        PPOTrainer(model, config, train_dataset=prompts, reward_funcs=[_length_reward]).train()

    def ppo_step_api():
        # generate() then step() with per-token and scalar rewards
        config = PPOConfig(**_common(root / "ppo_step_api", batch_size=4, per_device_train_batch_size=2, ppo_epochs=1, kl_coef=0.1,
                                     max_completion_length=5, temperature=1.5, logging_steps=1))
        # step() logs once per call; the recorded numbers are per optimizer step, so a callback
        # asks for a line after each (TrainerCallback control, obeyed by the loop)
        trainer = PPOTrainer(config, model, callbacks=[_LogEveryStep()])
        queries = [row["prompt"] for row in prompts[:4]]
        responses = trainer.generate(queries, return_ids=True)
        rewards = [1.0, -0.5, [0.25] * len(responses[2]), 2.0]
        trainer.step(queries, responses, rewards)

    return {"grpo_scripted": grpo_scripted, "grpo_sampled": grpo_sampled, "ppo_scripted": ppo_scripted,
            "ppo_sampled": ppo_sampled, "ppo_step_api": ppo_step_api}


class _LogEveryStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_log = True


def run_case(name: str, root: Path) -> dict:
    """``{"loss": [per step], "grad_norm": [per step], "grads": [per step summary]}``."""
    from posttrain.train import loop

    steps: list = []
    original = _recording(loop, steps)
    try:
        cases(root)[name]()
    finally:
        loop.build_optimizer = original
    records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    return {"loss": [r["loss"] for r in records], "grad_norm": [r["grad_norm"] for r in records], "grads": steps}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out, names = Path(sys.argv[1]), sys.argv[2:] or list(cases(Path(".")))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("POSTTRAIN_FIXTURES", str(Path(tmp) / "fixtures"))
        out.write_text(json.dumps({name: run_case(name, Path(tmp)) for name in names}, indent=1))


if __name__ == "__main__":
    main()
