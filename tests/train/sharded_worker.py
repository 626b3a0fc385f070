"""Trains every trainer for a few steps, sharded (FSDP2) when launched as several processes, and
records what each process held; run by tests/train/test_sharded.py once in-process (one
process, unsharded, 8 rows per micro-batch) and under ``torchrun --nproc_per_node 2`` (4 rows
each) and ``--nproc_per_node 4`` (2 rows each): the same global batch every time. Not a test
module itself (no ``test_`` prefix).

    python -m torch.distributed.run --nproc_per_node N sharded_worker.py OUT BATCH MODEL CLASSIFIER [CASE...]
        [--die-after STEP] [--resume-from CHECKPOINT] [--also OUT=CHECKPOINT ...]

``--die-after``: every process SIGKILLs itself once that optimizer step is done (the newest
checkpoint is step SAVE_STEPS); ``--resume-from``: the runs resume from that checkpoint (a
path, or ``latest``); ``--also OUT=CHECKPOINT``: afterwards, the same runs into OUT resumed from
CHECKPOINT. They serve the checkpoint tests of tests/train/test_sharded.py.

For each case the run goes to OUT/<case>; each process writes OUT/report-<rank>.json: per case,
every trained (and reference) parameter's type, mesh size, placement and the number of elements
this process holds, so the test can tell sharding from plain data parallelism; and, for GRPO,
completions sampled from the whole weights gathered for generation and from final/
loaded with ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from posttrain import (
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
from posttrain.testing import ScriptedEngine

from resume_worker import die_after

CASES = ("sft", "sft-lora", "rm", "dpo-model", "dpo-precomputed", "kto", "grpo", "ppo")
STEPS = 4
SAVE_STEPS = 2
SCRIPT = [" 1", " 22", " 7 7 7", " 333", " 4"]


def common(output_dir: Path, batch: int, fsdp: bool, **extra) -> dict:
    options = dict(
        output_dir=str(output_dir), per_device_train_batch_size=batch, max_steps=STEPS, lr_scheduler="constant",
        max_grad_norm=1.0, logging_steps=1, progress_bar=False, seed=3, learning_rate=1e-3, fsdp=fsdp,
        # Adam turns a gradient of ~1e-9 into a full lr-sized step of its sign: a larger epsilon keeps
        # the last-bit differences of another reduction order from moving such weights at all
        adam_epsilon=1e-6,
    )
    options.update(extra)
    return options


def build(case: str, out: Path, batch: int, model: str, classifier: str, fsdp: bool, **extra):
    """The trainer of ``case``: 16 rows (or prompts), so 1 x 8 and N x 8/N rows per step walk the
    same data; SFT checkpoints at step SAVE_STEPS (the resume tests start from it)."""
    task = ArithmeticTask(seed=1)
    run = out / case
    options = common(run, batch, fsdp, **extra)
    if case == "sft":
        # 1- and 3-turn conversations: processes hold different numbers of loss tokens; the blocks
        # recompute their activations in backward (gradient checkpointing under sharding)
        rows = task.conversations("train", 8, turns=1) + task.conversations("train", 8, turns=3)
        config = SFTConfig(**options, loss_mode="assistant", gradient_checkpointing=True, save_steps=SAVE_STEPS)
        return SFTTrainer(model, config, train_dataset=rows)
    if case == "sft-lora":
        options["learning_rate"] = 1e-2  # adapters start at B = 0 and move slowly
        return SFTTrainer(model, SFTConfig(**options, use_lora=True, lora_r=4), train_dataset=task.prompt_completion("train", 16))
    if case == "rm":
        return RewardTrainer(classifier, RewardConfig(**options), train_dataset=task.preference_pairs("train", 16))
    if case.startswith("dpo"):
        mode = case.partition("-")[2]
        config = DPOConfig(**options, reference_mode=mode, ref_logps_cache_dir=str(run / "cache"))
        return DPOTrainer(model, config, train_dataset=task.preference_pairs("train", 16))
    if case == "kto":
        return KTOTrainer(model, KTOConfig(**options, reference_mode="model"), train_dataset=task.unpaired("train", 16))
    if case == "grpo":
        # a sharded reference (beta > 0) and an old-log-prob pass (2 iterations per generation)
        config = GRPOConfig(**options, num_generations=2, max_completion_length=8, scale_rewards="batch", beta=0.1, num_iterations=2)
        trainer = GRPOTrainer(model, config, train_dataset=task.prompt_only("train", 16), reward_funcs=[length_reward])
        trainer._engine = ScriptedEngine(trainer.tokenizer, SCRIPT)
        return trainer
    if case == "ppo":
        # policy and its critic (a copy of the backbone) in one sharded module; a sharded reference
        config = PPOConfig(**options, batch_size=batch, ppo_epochs=2, max_completion_length=8, kl_coef=0.1, adap_kl_ctrl=True, kl_target=0.01, kl_horizon=16.0)
        trainer = PPOTrainer(model, config, train_dataset=task.prompt_only("train", 16), reward_funcs=[length_reward])
        trainer._engine = ScriptedEngine(trainer.tokenizer, SCRIPT)
        return trainer
    raise ValueError(f"unknown case {case!r}")


def length_reward(completions):
    return [float(len(c)) for c in completions]


def describe(module: torch.nn.Module) -> list[list]:
    """``[name, is DTensor, mesh size, placements, elements held here, elements in all]`` per parameter."""
    from torch.distributed.tensor import DTensor

    rows = []
    for name, parameter in module.named_parameters():
        if isinstance(parameter, DTensor):
            rows.append([name, True, parameter.device_mesh.size(), str(tuple(parameter.placements)), parameter.to_local().numel(), parameter.numel()])
        else:
            rows.append([name, False, 1, "", parameter.numel(), parameter.numel()])
    return rows


def sampled_ids(trainer, final: Path) -> dict:
    """Completions of four prompts sampled (same seed, temperature 1.5) from the whole weights
    gathered out of the shards, the path rollouts take, and from final/ loaded on this process
    alone: the same weights give the same tokens."""
    from transformers import AutoModelForCausalLM

    from posttrain.rollout import HFGenerationEngine, SamplingOptions

    prompts = [item["prompt_ids"] for item in list(trainer.train_source.dataset)[:4]]
    options = SamplingOptions(max_completion_length=8, temperature=1.5)
    out = {}
    for name, engine in (
        ("gathered", HFGenerationEngine(trainer.model, trainer.tokenizer, weights=trainer.gathered_weights)),
        ("final", HFGenerationEngine(AutoModelForCausalLM.from_pretrained(final), trainer.tokenizer)),
    ):
        torch.manual_seed(1234)
        out[name] = [c.token_ids for c in engine.generate(prompts, options)]
    return out


def run_cases(out: str, batch: int, model: str, classifier: str, cases=CASES, fsdp=None, die=None, resume=None) -> None:
    """Train ``cases`` into ``out/<case>``; sharded when several processes run it (or ``fsdp``)."""
    root = Path(out)
    fsdp = int(os.environ.get("WORLD_SIZE", "1")) > 1 if fsdp is None else fsdp
    report = {}
    for case in cases:
        trainer = build(case, root, batch, model, classifier, fsdp, **({"resume_from_checkpoint": resume} if resume else {}))
        if die is not None:
            trainer.callbacks.append(die_after(die))
        trainer.train()
        entry = {"module": describe(trainer.module)}
        reference = getattr(trainer, "reference", None)  # the ReferencePolicy component, when the trainer holds one
        frozen = getattr(reference, "_frozen", None)  # its sharded copy, once it has run
        if frozen is not None:
            entry["reference"] = describe(frozen)
        if case == "grpo":
            entry["generation"] = sampled_ids(trainer, root / case / "final")
        report[case] = entry
    rank = int(os.environ.get("RANK", "0"))
    (root / f"report-{rank}.json").write_text(json.dumps(report))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("batch", type=int)
    parser.add_argument("model")
    parser.add_argument("classifier")
    parser.add_argument("cases", nargs="*")
    parser.add_argument("--fsdp", action="store_true", help="shard even as one process (a world of size 1)")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--resume-from")
    parser.add_argument("--also", action="append", default=[], metavar="OUT=CHECKPOINT", help="then train the cases again into OUT, resumed from CHECKPOINT")
    args = parser.parse_args(argv)
    cases, fsdp = args.cases or CASES, args.fsdp or None
    run_cases(args.out, args.batch, args.model, args.classifier, cases, fsdp, args.die_after, args.resume_from)
    for spec in args.also:  # one process start serves several resumed runs
        out, _, checkpoint = spec.partition("=")
        run_cases(out, args.batch, args.model, args.classifier, cases, fsdp, resume=checkpoint)


if __name__ == "__main__":
    main(sys.argv[1:])
