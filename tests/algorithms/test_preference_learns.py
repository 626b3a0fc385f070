"""Issue 3 must-show 4 (partly): DPO and KTO started from an SFT checkpoint learn the held-out
preference signal, without wrecking the model's greedy accuracy.

The SFT start is the demo recipe stopped early (1200 steps: ~15% held-out exact match on this
machine), so there is room to improve. What is asserted is what we have measured to hold; raising
greedy exact match itself with DPO/KTO on this task is still open (see the issue notes).
"""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from posttrain.algorithms.dpo import DPOConfig, DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.algorithms.sft import SFTTrainer
from posttrain.demo import DEMO_ROWS, demo_config
from posttrain.tasks import ArithmeticTask, exact_match_accuracy

TASK = ArithmeticTask(seed=0)


@pytest.fixture(scope="module")
def sft_start(tmp_path_factory, model_path):
    output = tmp_path_factory.mktemp("sft-start")
    config = demo_config(str(output), steps=1200, progress_bar=False, logging_steps=0)
    SFTTrainer(model_path("llama-small"), config, train_dataset=TASK.prompt_completion("train", DEMO_ROWS)).train()
    path = str(output / "final")
    model = AutoModelForCausalLM.from_pretrained(path)
    from transformers import AutoTokenizer

    accuracy = exact_match_accuracy(TASK, model, AutoTokenizer.from_pretrained(path), TASK.prompt_only("test", 200)).accuracy
    return path, accuracy


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path),
        learning_rate=1e-4,
        per_device_train_batch_size=16,
        max_steps=150,
        beta=0.1,
        lr_scheduler="constant_with_warmup",
        warmup_steps=10,
        max_length=64,
        progress_bar=False,
        logging_steps=0,
        save_final_model=False,
    )


def test_dpo_learns_held_out_preferences(sft_start, tmp_path):
    path, start_accuracy = sft_start
    trainer = DPOTrainer(path, DPOConfig(**_common(tmp_path)), train_dataset=TASK.preference_pairs("train", 2400), eval_dataset=TASK.preference_pairs("test", 200))
    before = trainer.evaluate()
    assert before["eval/rewards/accuracies"] == 0.0  # policy == reference: every implicit reward is 0
    trainer.train()
    after = trainer.evaluate()
    assert after["eval/rewards/accuracies"] >= 0.6
    assert after["eval/rewards/margins"] > 0
    greedy = exact_match_accuracy(TASK, trainer.model, trainer.tokenizer, TASK.prompt_only("test", 200))
    assert greedy.accuracy >= start_accuracy - 0.05 and greedy.eos_rate >= 0.95


def test_kto_learns_held_out_preferences(sft_start, tmp_path):
    path, start_accuracy = sft_start
    trainer = KTOTrainer(path, KTOConfig(**_common(tmp_path)), train_dataset=TASK.unpaired("train", 2400), eval_dataset=TASK.unpaired("test", 200))
    before = trainer.evaluate()
    assert before["eval/rewards/chosen"] == before["eval/rewards/rejected"] == 0.0
    trainer.train()
    after = trainer.evaluate()
    # desirable completions end up with a higher implicit reward than undesirable ones
    assert after["eval/rewards/chosen"] - after["eval/rewards/rejected"] > 0.05
    greedy = exact_match_accuracy(TASK, trainer.model, trainer.tokenizer, TASK.prompt_only("test", 200))
    assert greedy.accuracy >= start_accuracy - 0.05 and greedy.eos_rate >= 0.95
