"""RewardTrainer: batch layout, loss and metric plumbing with hand-derived numbers, data checks,
LoRA, and held-out pairwise accuracy on the arithmetic task for a causal and an encoder
backbone."""

from __future__ import annotations

import math
import time

import pytest
import torch

from posttrain import testing
from posttrain.algorithms.reward import RewardConfig, RewardTrainer
from posttrain.data.errors import ChatTemplateError
from posttrain.losses.reward import bradley_terry_loss
from posttrain.models.reward import RewardScorer
from posttrain.tasks import ArithmeticTask
from posttrain.testing import assert_close_to_scale
from posttrain.train.metrics import MetricAccumulator

ROWS = [
    {"prompt": "What is 3+4?", "chosen": " 7", "rejected": " 8", "margin": 0.5},
    {"prompt": "What is 47+38?", "chosen": " 85", "rejected": " 75"},  # no margin: 0
    {"prompt": "Hello!", "chosen": " How are you today?", "rejected": " no", "margin": 1.0},
]


def _config(tmp_path, **values) -> RewardConfig:
    base = dict(output_dir=str(tmp_path), progress_bar=False, save_final_model=False, logging_steps=0, mixed_precision="no")
    return RewardConfig(**{**base, **values})


def _trainer(tmp_path, tokenizer, arch="llama", rows=ROWS, **values) -> RewardTrainer:
    model = testing.build_sequence_classifier(arch, tokenizer)
    return RewardTrainer(model, _config(tmp_path, **values), train_dataset=rows, tokenizer=tokenizer)


def _batch(trainer, indices):
    source = trainer.train_source
    return source.collate_fn([source.dataset[i] for i in indices])


class FixedRewards(torch.nn.Module):
    """Stands in for the reward model: returns the given rewards and records the batch shapes."""

    def __init__(self, rewards):
        super().__init__()
        self.rewards = torch.tensor(rewards)
        self.shapes = []

    def forward(self, input_ids, attention_mask):
        self.shapes.append(tuple(input_ids.shape))
        return self.rewards


def _neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_collator_puts_chosen_then_rejected_with_mask_and_margins(tmp_path, chatml):
    trainer = _trainer(tmp_path, chatml)
    items = [trainer.train_source.dataset[i] for i in range(3)]
    batch = _batch(trainer, [0, 1, 2])
    rows = [item["chosen"] for item in items] + [item["rejected"] for item in items]
    lengths = [len(row["input_ids"]) for row in rows]
    assert batch["pairs"] == 3 and batch["input_ids"].shape == (6, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for b, row in enumerate(rows):
        assert batch["input_ids"][b, : lengths[b]].tolist() == row["input_ids"]
        assert row["input_ids"][-1] == chatml.eos_token_id  # causal backbone: EOS appended
    assert batch["margin"].tolist() == [0.5, 0.0, 1.0]
    assert _batch(trainer, [1])["margin"] is None  # no row of the batch has a margin


def test_loss_and_metrics_hand_checked(tmp_path, chatml):
    trainer = _trainer(tmp_path, chatml, center_rewards_coefficient=0.01)
    # chosen [2, -1, 0.5], rejected [1, 0.5, 0.5], margins [0.5, 0, 1]:
    # logits r_c - r_r - m = [0.5, -1.5, -1]; centering 0.01 * (r_c + r_r)^2 = [0.09, 0.0025, 0.01]
    # losses = log(1 + e^-x) + centering = [0.474077 + 0.09, 1.701413 + 0.0025, 1.313262 + 0.01]
    #        = [0.564077, 1.703913, 1.323262], sum 3.591252
    module = FixedRewards([2.0, -1.0, 0.5, 1.0, 0.5, 0.5])
    loss, metrics = trainer.compute_loss(module, _batch(trainer, [0, 1, 2]))
    assert module.shapes[0][0] == 6  # one forward of 2B rows
    assert loss.item() == pytest.approx(3.591252, abs=1e-5)
    assert _neg_log_sigmoid(0.5) + 0.09 == pytest.approx(0.564077, abs=1e-6)
    # second micro-batch: one pair without margin, chosen 3, rejected -2:
    # log(1 + e^-5) + 0.01 * 1^2 = 0.006715 + 0.01 = 0.016715
    loss2, metrics2 = trainer.compute_loss(FixedRewards([3.0, -2.0]), _batch(trainer, [1]))
    assert loss2.item() == pytest.approx(0.016715, abs=1e-5)
    accumulated = MetricAccumulator()
    accumulated.update(metrics)
    accumulated.update(metrics2)
    values = accumulated.compute()
    # over 4 pairs: loss (3.591252 + 0.016715) / 4 = 0.901992; chosen wins in pairs 0 and 3
    # (pair 2 is a tie) -> 2/4; margin (1 - 1.5 + 0 + 5) / 4 = 1.125
    assert values["loss"] == pytest.approx(0.901992, abs=1e-5)
    assert values["accuracy"] == pytest.approx(0.5)
    assert values["margin"] == pytest.approx(1.125)
    # chosen (2 - 1 + 0.5 + 3) / 4 = 1.125; rejected (1 + 0.5 + 0.5 - 2) / 4 = 0;
    # all 8 rewards: sum 4.5 -> mean 0.5625, min -2 (batch 2), max 3 (batch 2)
    assert values["rewards/chosen"] == pytest.approx(1.125)
    assert values["rewards/rejected"] == pytest.approx(0.0)
    assert values["rewards/mean"] == pytest.approx(0.5625)
    assert values["rewards/min"] == -2.0 and values["rewards/max"] == 3.0


def test_training_rewards_equal_scorer_rewards(tmp_path, chatml):
    """The trainer's padded 2B-row forward and the scorer (other tokenization entry point,
    other batching) give the same rewards, so a trained model scores online exactly as it was
    trained."""
    trainer = _trainer(tmp_path, chatml, center_rewards_coefficient=0.01)
    calls = []
    trainer.model.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    batch = _batch(trainer, [0, 1, 2])
    module = trainer.wrap_model(trainer.model)
    with torch.no_grad():
        loss, _ = trainer.compute_loss(module, batch)
    assert len(calls) == 1  # chosen and rejected in one pass through the backbone
    scorer = trainer.scorer(batch_size=2)
    prompts = [row["prompt"] for row in ROWS]
    chosen = scorer.score(prompts, [row["chosen"] for row in ROWS])
    rejected = scorer.score(prompts, [row["rejected"] for row in ROWS])
    expected, _ = bradley_terry_loss(chosen, rejected, torch.tensor([0.5, 0.0, 1.0]), center_coefficient=0.01)
    assert loss.item() == pytest.approx(expected.sum().item(), abs=1e-5)


def test_implicit_prompt_rows(tmp_path, chatml):
    rows = [{"chosen": "What is 2+2? 4", "rejected": "What is 2+2? 5"}]
    trainer = _trainer(tmp_path, chatml, rows=rows)
    item = trainer.train_source.dataset[0]
    # the shared prefix "What is 2+2?" is the prompt: only " 4"/" 5" and EOS carry weight
    completion = [t for t, w in zip(item["chosen"]["input_ids"], item["chosen"]["loss_weights"]) if w]
    assert chatml.decode(completion) == " 4<|endoftext|>"


def test_encoder_gets_no_eos_and_refuses_conversations(tmp_path, tokenizers):
    tokenizer = tokenizers["no_template"]
    trainer = _trainer(tmp_path, tokenizer, arch="bert")
    assert all(item["chosen"]["input_ids"][-1] != tokenizer.eos_token_id for item in trainer.train_source.dataset)
    conversational = ArithmeticTask(seed=0).preference_pairs("train", 4, conversational=True)
    with pytest.raises(ChatTemplateError, match="plain strings.*set chat_template"):
        _trainer(tmp_path, tokenizer, arch="bert", rows=conversational)


def test_causal_lm_checkpoint_gets_one_output_head(tmp_path, model_path):
    trainer = RewardTrainer(model_path("llama"), _config(tmp_path), train_dataset=ROWS)
    assert type(trainer.model).__name__ == "LlamaForSequenceClassification"
    assert trainer.model.config.num_labels == 1


def test_lora_trains_adapters_and_head_only(tmp_path, chatml):
    trainer = _trainer(tmp_path, chatml, use_lora=True, lora_r=4, learning_rate=1e-2, max_steps=3, per_device_train_batch_size=3)
    base = trainer.model.get_base_model()
    frozen = base.model.layers[0].mlp.down_proj.base_layer.weight.detach().clone()
    head_before = base.score.modules_to_save["default"].weight.detach().clone()
    trainer.train()
    assert torch.equal(base.model.layers[0].mlp.down_proj.base_layer.weight, frozen)
    assert not torch.allclose(base.score.modules_to_save["default"].weight, head_before)
    # our pooling runs through the adapters: it matches the peft model's own forward (pad != EOS)
    batch = _batch(trainer, [0, 1, 2])
    with torch.no_grad():
        ours = trainer.wrap_model(trainer.model)(batch["input_ids"], batch["attention_mask"])
        theirs = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert_close_to_scale(ours, theirs)


# ----------------------------------------------------------------------------- it learns
#
# Held-out pairs of the arithmetic task. Its default pairs (right answer vs a plausible slip: off
# by one or ten, swapped digits, dropped carry) are NOT learnable by these tiny random backbones in
# a test's budget: 3000 steps x 32 pairs (~60 s) reached 0.60 held-out accuracy on
# classifier-llama, 10000 steps 0.52 on classifier-bert, and starting from an SFT'd llama-small
# (99% exact match) 300 steps reached 0.59 -- the reward at one position would have to recompute
# the sum. ``preference_pairs(rejected="echo")`` keeps the prompts and the train/test split but
# rejects an echo of one of the operands: the model must compare the completion with the prompt,
# and what it learns must carry over to problems it never saw.


def _pairwise_accuracy(scorer: RewardScorer, rows: list[dict]) -> float:
    prompts = [row["prompt"] for row in rows]
    chosen = scorer.score(prompts, [row["chosen"] for row in rows])
    rejected = scorer.score(prompts, [row["rejected"] for row in rows])
    return (chosen > rejected).float().mean().item()


# Measured on 2 cores (held-out accuracy after training, seeds 1 / 2 / 42 of the data order):
# llama 1e-3 x 300 steps 0.965 / 0.995 / 0.995 in ~6 s; bert 5e-4 x 800 steps 0.965 / 0.97 /
# 0.965 in ~15 s (post-LN BERT at 1e-3 or 2e-3 was faster but fell to 0.76-0.84 on one seed).
@pytest.mark.learning
@pytest.mark.parametrize(
    ("arch", "tokenizer_kind", "learning_rate", "steps"),
    [("llama", None, 1e-3, 300), ("bert", "no_template", 5e-4, 800)],  # causal; encoder without chat template
)
def test_reward_model_learns_held_out_preferences(arch, tokenizer_kind, learning_rate, steps, tmp_path, model_path, tokenizers):
    task = ArithmeticTask(seed=0)
    train = task.preference_pairs("train", steps * 32, rejected="echo")
    held_out = task.preference_pairs("test", 200, rejected="echo")
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}
    config = _config(
        tmp_path, learning_rate=learning_rate, max_steps=steps, per_device_train_batch_size=32, max_length=64,
        warmup_ratio=0.05, per_device_eval_batch_size=100,
    )
    tokenizer = tokenizers[tokenizer_kind] if tokenizer_kind else None
    trainer = RewardTrainer(model_path(f"classifier-{arch}"), config, train_dataset=train, eval_dataset=held_out, tokenizer=tokenizer)
    scorer = trainer.scorer(batch_size=100)
    before = _pairwise_accuracy(scorer, held_out)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = _pairwise_accuracy(scorer, held_out)
    assert after >= 0.9, (before, after, seconds)
    assert after - before >= 0.3, (before, after)
    # the loop's evaluation (2B-row batches, summed metrics) agrees with the scorer
    assert trainer.evaluate()["eval/accuracy"] == pytest.approx(after, abs=1e-6)
