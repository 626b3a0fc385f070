"""Supervised fine-tuning: maximise the likelihood of the trained tokens.

Objective: ``sum_t w_t * -log p(x_t | x_<t) / sum_t w_t`` over the whole accumulated batch, where
``w_t`` are the loss weights the data layer assigned (0 on prompts / non-assistant turns in the
masked modes, per-turn weights when asked). Departures from the usual recipe, on purpose:

- Normalisation is by the weighted token count of the *whole accumulated batch* (all
  micro-batches and processes), not per micro-batch, so gradient accumulation does not change
  the objective.
- Packed rows are isolated per example (restarting position ids; checked at start-up), so
  packing never lets one example attend to another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import TrainConfig, option
from posttrain.data.collate import Collator
from posttrain.data.packing import best_fit_decreasing
from posttrain.data.prepare import prepare_lm_data
from posttrain.data.tokenize import LOSS_MODES, MAX_PROMPT_LENGTH_HELP, OVERLONG_POLICIES, LMDataOptions
from posttrain.losses.sft import token_nll
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import set_chat_template
from posttrain.models.packing_check import check_packing_isolation
from posttrain.train.loop import BatchSource, Trainer
from posttrain.train.metrics import Metric

# Per-turn losses are logged for turns 0..MAX_TURN_BUCKETS-2; later turns share the last bucket.
MAX_TURN_BUCKETS = 8


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning options (plus everything in TrainConfig)."""

    learning_rate: float = option(2e-5, "Peak learning rate (AdamW).")
    max_length: int | None = option(1024, "Longest example in tokens; longer ones are truncated (or dropped, see overlong) and counted.", range="[2, inf)")
    max_prompt_length: int | None = option(None, MAX_PROMPT_LENGTH_HELP, range="[2, inf)")
    loss_mode: str = option("auto", "Which tokens are trained on: auto (completion for prompt-completion data, all otherwise), all, completion, assistant, last_assistant.", choices=LOSS_MODES)
    turn_weights: object = option("uniform", "Weights of trained turns: uniform, decay:<gamma> (the last turn weighs 1, each earlier one gamma times the next) or a list from the first turn.")
    overlong: str = option("truncate", "What to do with examples longer than max_length: truncate or drop (both counted).", choices=OVERLONG_POLICIES)
    add_eos: bool = option(True, "Append the EOS token to plain text and string completions when missing (never doubled).")
    chat_template: str | None = option(None, "A Jinja chat template (or a path to one) replacing the tokenizer's.")
    chat_template_kwargs: dict = option({}, "Extra variables for the chat template (e.g. enable_thinking).")
    packing: bool = option(False, "Pack examples into rows of max_length (best-fit decreasing); attention never crosses examples.")
    padding_free: bool = option(False, "Flatten each batch into one row without padding (examples isolated as in packing).")
    group_by_length: bool = option(False, "Batch examples of similar length together to cut padding (padded batches only). Off by default: on short, uniform data (arithmetic) length-homogeneous batches bias each step and slowed learning several-fold in our runs; packing or padding_free cut padding without that bias.")
    pad_to_multiple_of: int | None = option(None, "Round padded lengths up to a multiple of this (e.g. 8 for tensor cores).", range="[1, inf)")
    dataset_num_proc: int | None = option(None, "Processes for tokenizing the dataset.", range="[1, inf)")

    def data_options(self) -> LMDataOptions:
        return LMDataOptions(
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            loss_mode=self.loss_mode,
            turn_weights=self.turn_weights,
            overlong=self.overlong,
            add_eos=self.add_eos,
            chat_template_kwargs=dict(self.chat_template_kwargs),
        )


class _Items(torch.utils.data.Dataset):
    """Map-style view of tokenized examples; each item is a list of examples (one, or a packed
    bin's worth)."""

    def __init__(self, examples, units: list[list[int]]):
        self.examples = examples
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> list[dict]:
        return [self.examples[i] for i in self.units[index]]


class SFTTrainer(Trainer):
    """``SFTTrainer(model=..., config=SFTConfig(...), train_dataset=..., eval_dataset=...,
    tokenizer=...).train()``.

    ``model``: path, hub name or model object. Datasets: ``datasets.Dataset`` or lists of dicts
    in any language-modelling format (text, messages, prompt-completion).
    """

    config_class = SFTConfig

    def __init__(self, model=None, config=None, **kwargs):
        self.data_reports = {}
        self._per_turn_losses = False  # logged for conversations only (set by the training data)
        super().__init__(model, config, **kwargs)

    def build_batch_source(self, rows, split: str) -> BatchSource:
        cfg = self.config
        set_chat_template(self.tokenizer, cfg.chat_template)
        prepared = prepare_lm_data(rows, self.tokenizer, cfg.data_options(), num_proc=cfg.dataset_num_proc, desc=f"tokenizing {split}")
        self.data_reports[split] = prepared.report
        if split == "train":
            self._per_turn_losses = prepared.data_format.conversational
        self.reporter.print(f"[bold]{split} data[/] ({prepared.data_format}, loss_mode={prepared.loss_mode}):")
        for line in prepared.report.lines():
            self.reporter.print(f"  {line}")
        lengths = prepared.lengths
        if cfg.packing:
            if cfg.max_length is None:
                raise ValueError("packing needs max_length (the capacity of a packed row)")
            units = best_fit_decreasing(lengths, cfg.max_length)
            mode = "packed"
        else:
            units = [[i] for i in range(len(lengths))]
            mode = "padding_free" if cfg.padding_free else "padded"
        collate = Collator(mode, pad_token_id=self.tokenizer.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of)
        unit_lengths = [sum(lengths[i] for i in unit) for unit in units]
        return BatchSource(_Items(prepared.examples, units), unit_lengths, collate, group_by_length=cfg.group_by_length and mode == "padded")

    def wrap_model(self, model) -> torch.nn.Module:
        cfg = self.config
        if cfg.packing or cfg.padding_free:
            # Probe the batch shape training will use (kernels have differed between one-row and
            # multi-row batches: FlashAttention-2 alone reads position ids only in one row).
            one_row = (cfg.padding_free and not cfg.packing) or cfg.per_device_train_batch_size == cfg.per_device_eval_batch_size == 1
            check_packing_isolation(model, batch_rows=1 if one_row else 2, device=self.accelerator.device)
        return TokenLogProbs.for_config(model, self.config)

    def count_units(self, batch) -> float | torch.Tensor:
        # summed by the collator on the host: no device read (a hand-made batch is summed here)
        return batch["loss_weight_sum"] if "loss_weight_sum" in batch else batch["loss_weights"].sum()

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        # The head runs on the trained tokens only: untrained ones have weight 0 in the loss
        # and are masked out of every metric, so their log-probs would be thrown away.
        stats = module(batch["input_ids"], batch["position_ids"], with_stats=True, positions=batch.get("trained_positions"))
        weights = batch["loss_weights"]
        per_token = token_nll(stats.logps, weights)
        loss_sum = per_token.sum()
        trained = weights > 0
        num_trained = trained.sum()
        metrics = {
            "loss": Metric.mean(loss_sum, weights.sum()),
            "token_accuracy": Metric.mean((stats.argmax_correct & trained).sum(), num_trained),
            "entropy": Metric.mean((stats.entropy * trained).sum(), num_trained),
        }
        if self._per_turn_losses:
            metrics.update(per_turn_losses(-stats.logps.detach(), batch["turn_index"], trained))
        return loss_sum, metrics


def per_turn_losses(nll: torch.Tensor, turn_index: torch.Tensor, trained: torch.Tensor) -> dict[str, Metric]:
    """Mean unweighted NLL of the trained tokens of each turn index: ``nll``, ``turn_index`` and
    ``trained`` are ``(B, T)``; turns beyond the last bucket are pooled into it."""
    in_turn = (trained & (turn_index >= 0)).reshape(-1)
    # Every token goes into some bucket with value 0 when it is not in a trained turn: boolean
    # indexing would wait for the device to learn how many tokens are selected.
    bucket = turn_index.clamp(min=0, max=MAX_TURN_BUCKETS - 1).reshape(-1)
    values = torch.where(in_turn, nll.reshape(-1).float(), 0.0)
    sums = torch.zeros(MAX_TURN_BUCKETS, device=nll.device).index_add_(0, bucket, values)
    counts = torch.zeros(MAX_TURN_BUCKETS, device=nll.device).index_add_(0, bucket, in_turn.float())
    names = [f"loss/turn_{k}" for k in range(MAX_TURN_BUCKETS - 1)] + [f"loss/turn_{MAX_TURN_BUCKETS - 1}+"]
    return {name: Metric.mean(sums[k], counts[k]) for k, name in enumerate(names)}
