"""Reward modelling: a scalar score trained on preference pairs with the Bradley-Terry loss.

Objective per pair (Bradley & Terry 1952, as used for RLHF reward models by Ouyang et al.
2022): ``-log sigmoid(r(x, y_c) - r(x, y_r) - m) + c * (r(x, y_c) + r(x, y_r))^2``, summed over
the pairs of the micro-batch and divided by the number of pairs in the whole accumulated batch.
``m`` is the row's ``margin`` column (0 for rows without one; Llama 2's graded margins) and
``c`` the ``center_rewards_coefficient`` (Eisenstein et al. 2023, who use 0.01).

Departures from the common recipe, on purpose:

- Chosen and rejected sequences of a micro-batch go through the model as ONE right-padded
  batch of ``2B`` rows (chosen first), with an attention mask so encoders ignore the pads.
- For causal backbones the reward is read at each sequence's last real token, located from its
  length, not by Hugging Face's "last token that is not the pad token" rule, which pools at the
  wrong token when the pad token is EOS (see :mod:`posttrain.models.reward`).
- Sequences of causal backbones end with EOS by default (as in SFT and DPO), so the reward is
  read at the same kind of token for every completion; encoders get no EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import TrainConfig, option
from posttrain.data import formats
from posttrain.data.chat import require_chat_template
from posttrain.data.preference import prepare_preference_pairs
from posttrain.data.prepare import column_names, first_row
from posttrain.data.tokenize import MAX_PROMPT_LENGTH_HELP, OVERLONG_POLICIES, LMDataOptions
from posttrain.losses.reward import bradley_terry_loss
from posttrain.models.loading import load_sequence_classifier, prepare_for_training, set_chat_template
from posttrain.models.reward import RewardModule, check_reward_head, default_add_eos, padded_batch
from posttrain.train.loop import BatchSource, Trainer
from posttrain.train.metrics import Metric


@dataclass
class RewardConfig(TrainConfig):
    """Reward-model options (plus everything in TrainConfig). Batch sizes count pairs."""

    learning_rate: float = option(1e-5, "Peak learning rate (AdamW); 1e-5 suits full fine-tuning of pretrained backbones, tiny models from scratch want ~1e-3.")
    max_length: int | None = option(1024, "Longest prompt+completion in tokens; longer ones are truncated (counted) and pairs left without completion tokens dropped.", range="[2, inf)")
    max_prompt_length: int | None = option(None, MAX_PROMPT_LENGTH_HELP, range="[2, inf)")
    overlong: str = option("truncate", "truncate or drop sequences longer than max_length.", choices=OVERLONG_POLICIES)
    center_rewards_coefficient: float = option(0.0, "Weight of the (r_chosen + r_rejected)^2 penalty that keeps rewards centred on 0 (Eisenstein et al. 2023); 0.01 is a good value, 0 disables it.", range="[0, inf)")
    add_eos: bool | None = option(None, "Append EOS to string completions when missing; None: yes for causal backbones (the reward is read at the last token), no for encoders.")
    chat_template: str | None = option(None, "A Jinja chat template (or a path to one) replacing the tokenizer's; needed for conversational rows when the tokenizer has none.")
    chat_template_kwargs: dict = option({}, "Extra variables for the chat template.")
    disable_dropout: bool = option(True, "Switch off dropout: chosen and rejected are scored in one forward and compared, and dropout noise in that difference only slows learning.")
    pad_to_multiple_of: int | None = option(None, "Round padded lengths up to a multiple of this.", range="[1, inf)")

    def data_options(self, model=None) -> LMDataOptions:
        """How pairs are tokenized; ``add_eos=None`` is decided by the backbone: ``model`` (a
        loaded model) or else the configured model path."""
        add_eos = self.add_eos
        if add_eos is None:
            add_eos = default_add_eos(model if model is not None else self.model)
        return LMDataOptions(
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            loss_mode="completion",
            overlong=self.overlong,
            add_eos=add_eos,
            chat_template_kwargs=dict(self.chat_template_kwargs),
        )


class RewardPairCollator:
    """Pairs -> one right-padded batch of ``2B`` rows (all chosen, then all rejected):
    ``input_ids`` / ``attention_mask`` ``(2B, T)``, ``margin`` ``(B,)`` (0 where a row has
    none) or None when no row of the batch has one, ``pairs`` = B, ``num_tokens``."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict:
        rows = [item["chosen"] for item in items] + [item["rejected"] for item in items]
        batch = padded_batch(rows, self.pad_token_id, self.pad_to_multiple_of)
        margins = [item.get("margin") for item in items]
        batch["margin"] = None if all(m is None for m in margins) else torch.tensor([m or 0.0 for m in margins])
        batch["pairs"] = len(items)
        return batch


class RewardTrainer(Trainer):
    """``RewardTrainer(model, config=RewardConfig(...), train_dataset=..., eval_dataset=...,
    tokenizer=...).train()``.

    ``model``: a path or hub name (loaded with ``AutoModelForSequenceClassification`` and one
    output; a causal LM checkpoint gets a new ``score`` head) or a sequence classifier object.
    Rows are preference pairs: ``chosen``, ``rejected``, optional ``prompt`` (else the shared
    prefix) and optional ``margin``; strings or message lists.
    """

    config_class = RewardConfig

    def log_sample_completions(self, step: int) -> None:
        """Nothing to show: a sequence classifier scores text, it does not write any."""

    def __init__(self, model=None, config=None, **kwargs):
        self.data_reports = {}
        super().__init__(model, config, **kwargs)

    def load_model(self, model):
        cfg = self.config
        model = load_sequence_classifier(model, model_dtype=cfg.model_dtype, attn_implementation=cfg.attn_implementation, report=self.reporter.print_verbatim)
        check_reward_head(model)
        if getattr(model.config, "pad_token_id", None) is None:
            # Only so the saved model also batches under Hugging Face's own pooling; ours
            # reads lengths from the attention mask.
            model.config.pad_token_id = self.tokenizer.pad_token_id
        # SEQ_CLS makes peft train the new reward head in full beside the adapters.
        return prepare_for_training(model, cfg, task_type="SEQ_CLS")

    def data_options(self) -> LMDataOptions:
        return self.config.data_options(self.model)

    def build_batch_source(self, rows, split: str) -> BatchSource:
        cfg = self.config
        set_chat_template(self.tokenizer, cfg.chat_template)
        if len(rows) > 0:
            require_chat_template(self.tokenizer, formats.detect_format(column_names(rows), first_row(rows)).conversational)
        prepared = prepare_preference_pairs(rows, self.tokenizer, self.data_options())
        self.data_reports[split] = prepared.report
        self.reporter.print(f"[bold]{split} data[/] ({prepared.data_format}):")
        for line in prepared.lines():
            self.reporter.print(f"  {line}")
        items = prepared.items
        lengths = [len(i["chosen"]["input_ids"]) + len(i["rejected"]["input_ids"]) for i in items]
        return BatchSource(items, lengths, RewardPairCollator(self.tokenizer.pad_token_id, cfg.pad_to_multiple_of))

    def wrap_model(self, model) -> torch.nn.Module:
        return RewardModule(model)

    def count_units(self, batch) -> torch.Tensor:
        return torch.tensor(float(batch["pairs"]))

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        pairs = batch["pairs"]
        rewards = module(batch["input_ids"], batch["attention_mask"])
        margin = batch["margin"]
        losses, stats = bradley_terry_loss(
            rewards[:pairs],
            rewards[pairs:],
            margin=None if margin is None else margin.to(rewards.device),
            center_coefficient=self.config.center_rewards_coefficient,
        )
        # The loss function reports batch means; metrics are kept as sums over their counts so
        # they average exactly over micro-batches, steps and processes.
        metrics = {
            "loss": Metric.mean(losses.detach().sum(), pairs),
            "accuracy": Metric.mean(stats["accuracy"] * pairs, pairs),
            "margin": Metric.mean(stats["margin"] * pairs, pairs),
            "rewards/chosen": Metric.mean(stats["rewards/chosen"] * pairs, pairs),
            "rewards/rejected": Metric.mean(stats["rewards/rejected"] * pairs, pairs),
            "rewards/mean": Metric.mean(stats["rewards/mean"] * 2 * pairs, 2 * pairs),
            "rewards/min": Metric.min(stats["rewards/min"]),
            "rewards/max": Metric.max(stats["rewards/max"]),
        }
        return losses.sum(), metrics

    def scorer(self, batch_size: int = 32):
        """A :class:`~posttrain.models.reward.RewardScorer` over the model being trained, with
        this run's tokenization options."""
        from posttrain.models.reward import RewardScorer

        cfg = self.config
        return RewardScorer(
            self.model,
            self.tokenizer,
            batch_size=batch_size,
            max_length=cfg.max_length,
            add_eos=self.data_options().add_eos,
            chat_template_kwargs=cfg.chat_template_kwargs,
        )
