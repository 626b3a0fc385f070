"""Must-show 6: SFT on the arithmetic task lifts held-out greedy exact match far above the
untrained model, and the generations stop with EOS (the demo's recipe, ~1 minute on 2 cores)."""

from __future__ import annotations

from transformers import AutoModelForCausalLM

from posttrain.algorithms.sft import SFTTrainer
from posttrain.demo import DEMO_ROWS, demo_config
from posttrain.tasks import ArithmeticTask, exact_match_accuracy


def test_sft_learns_arithmetic(model_path, tmp_path):
    task = ArithmeticTask(seed=0)
    held_out = task.prompt_only("test", 200)
    path = model_path("llama-small")
    config = demo_config(str(tmp_path), progress_bar=False, logging_steps=0, save_final_model=False)
    trainer = SFTTrainer(path, config, train_dataset=task.prompt_completion("train", DEMO_ROWS))
    before = exact_match_accuracy(task, AutoModelForCausalLM.from_pretrained(path), trainer.tokenizer, held_out)
    trainer.train()
    after = exact_match_accuracy(task, trainer.model, trainer.tokenizer, held_out)
    assert before.accuracy <= 0.02
    assert after.accuracy >= 0.9, after.samples[:10]
    assert after.eos_rate >= 0.98
    # held-out really means unseen: no test prompt was in the training rows
    train_prompts = {row["prompt"] for row in task.prompt_completion("train", DEMO_ROWS)}
    assert not train_prompts & {row["prompt"] for row in held_out}
