"""A smaller student distilled from the demo's teacher, against the same student trained by SFT on
the same number of the teacher's greedy completions (issue 19, must-show 2).

    python benchmarks/distill_small_student.py --teacher outputs/demo/final --seeds 0 1 2
    python benchmarks/distill_small_student.py                 # trains the teacher first (the SFT demo)

The teacher is the SFT demo's model (Llama, 4 layers of 128, 100% held-out). The student is that
model with only the layers ``--keep-layers`` (default 0 and 2: half the depth, every other layer,
the initialisation DistilBERT used). From it, each arm trains ``--steps`` optimizer steps of
``--batch`` sequences at the same learning rate and schedule, on the same prompts:

- ``sft``: SFT on the teacher's greedy completions of those prompts;
- ``kd-off``: distillation on the same completions (``lmbda=0``), forward KL at ``--temperature``;
- ``kd-on``: on-policy distillation (``lmbda=1``): the student samples, the teacher scores every
  token (generalized JSD, ``beta=0.5``);
- ``kd-mixed``: half the batches each way (``lmbda=0.5``, GKD), JSD;

then greedy exact match on the 200 held-out problems. Each (arm, seed) runs in this process in
turn; the figures are the range over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ARMS = ("sft", "kd-off", "kd-on", "kd-mixed")


def truncated_student(teacher_path: str, directory: str, keep: tuple[int, ...]) -> str:
    """The teacher with only the layers ``keep``, saved to ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher_path)
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(keep)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(teacher_path).save_pretrained(directory)
    return directory


def teacher_completions(teacher_path: str, prompts: list[dict]) -> list[dict]:
    """Prompt-completion rows of the teacher's greedy completions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.rollout import HFGenerationEngine, SamplingOptions, encode_prompts

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    engine = HFGenerationEngine(AutoModelForCausalLM.from_pretrained(teacher_path).eval(), tokenizer, batch_size=256)
    ids = encode_prompts(tokenizer, [row["prompt"] for row in prompts])
    completions = engine.generate(ids, SamplingOptions(max_completion_length=6, do_sample=False), 1)
    return [{"prompt": row["prompt"], "completion": c.text} for row, c in zip(prompts, completions)]


def run_arm(arm: str, student: str, teacher: str, rows: list[dict], args, seed: int, output_dir: str) -> float:
    from posttrain import DistillationConfig, DistillationTrainer, SFTConfig, SFTTrainer
    from posttrain.demo import DEMO_EVAL_ROWS, demo_task
    from posttrain.tasks import exact_match_accuracy

    common = dict(
        output_dir=output_dir, seed=seed, learning_rate=args.learning_rate, lr_scheduler="constant", max_steps=args.steps,
        per_device_train_batch_size=args.batch, logging_steps=0, progress_bar=False, save_final_model=False, mixed_precision="no",
        overwrite_output_dir=True,
    )
    if arm == "sft":
        trainer = SFTTrainer(student, SFTConfig(**common, max_length=64), train_dataset=rows)
    else:
        lmbda = {"kd-off": 0.0, "kd-on": 1.0, "kd-mixed": 0.5}[arm]
        # off-policy: forward KL (soft cross-entropy) at --temperature; with student samples: JSD
        divergence = {"beta": 0.0, "temperature": args.temperature} if lmbda == 0.0 else {"beta": 0.5, "temperature": 1.0}
        config = DistillationConfig(**common, lmbda=lmbda, max_completion_length=6, **divergence)
        data = [{"prompt": row["prompt"]} for row in rows] if lmbda == 1.0 else rows
        trainer = DistillationTrainer(student, config, train_dataset=data, teacher_model=teacher)
    trainer.train()
    task = demo_task()
    return exact_match_accuracy(task, trainer.model, trainer.tokenizer, task.prompt_only("test", DEMO_EVAL_ROWS)).accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="the SFT demo's final model (default: train it first)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=1.0, help="of the off-policy divergence")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--keep-layers", nargs="+", type=int, default=[0, 2], help="the teacher's layers the student keeps")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    from posttrain.demo import DEMO_EVAL_ROWS, demo_task, run_demo
    from posttrain.tasks import exact_match_accuracy

    with tempfile.TemporaryDirectory(prefix="distill-small-") as work:
        teacher = args.teacher
        if teacher is None:
            run_demo(f"{work}/teacher", progress_bar=False, logging_steps=0)
            teacher = f"{work}/teacher/final"
        student = truncated_student(teacher, f"{work}/student", tuple(args.keep_layers))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        task = demo_task()
        start = exact_match_accuracy(task, AutoModelForCausalLM.from_pretrained(student), AutoTokenizer.from_pretrained(student), task.prompt_only("test", DEMO_EVAL_ROWS)).accuracy
        results = {"student_start": start, "arms": {arm: [] for arm in args.arms}}
        for seed in args.seeds:
            prompts = _prompts(args.steps * args.batch, seed)
            rows = teacher_completions(teacher, prompts)
            for arm in args.arms:
                accuracy = run_arm(arm, student, teacher, rows, args, seed, f"{work}/{arm}-{seed}")
                results["arms"][arm].append(accuracy)
                print(json.dumps({"arm": arm, "seed": seed, "accuracy": accuracy}), flush=True)
    print(f"student (layers {args.keep_layers} of the teacher) starts at {start:.1%}; {args.steps} steps x {args.batch} sequences, lr {args.learning_rate}")
    for arm, values in results["arms"].items():
        print(f"  {arm:<7} held-out {min(values):.1%}-{max(values):.1%} (mean {statistics.mean(values):.1%}) over seeds {args.seeds}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _prompts(count: int, seed: int) -> list[dict]:
    """``count`` training prompts of the demo task in an order drawn from ``seed``."""
    import random

    from posttrain.demo import demo_task

    rows = demo_task().prompt_only("train", None)
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    return [rows[order[i % len(rows)]] for i in range(count)]


if __name__ == "__main__":
    sys.exit(main())
