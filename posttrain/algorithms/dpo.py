"""Direct Preference Optimization and its loss family (sigmoid, robust, hinge, IPO, SimPO).

Each step forwards chosen and rejected completions of the micro-batch as ONE padded batch of
``2B`` rows (one pass through the weights, one set of kernel launches), sums the log-probs of
the completion tokens of each row, and hands them with the reference log-probs to
:func:`posttrain.losses.preference.preference_loss`. The loss is a sum over pairs divided by the
number of pairs in the whole accumulated batch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import torch

from posttrain.algorithms.reference import (
    PrecomputableReferenceConfig,
    ReferencePolicy,
    attach_reference,
    load_policy,
    sequence_logps,
    stack_reference,
)
from posttrain.config import option
from posttrain.data.collate import collate_packed, collate_padded
from posttrain.data.packing import best_fit_decreasing, make_packed_row
from posttrain.data.preference import prepare_preference_pairs
from posttrain.data.tokenize import MAX_PROMPT_LENGTH_HELP, OVERLONG_POLICIES, LMDataOptions
from posttrain.errors import ConfigError
from posttrain.losses.preference import PREFERENCE_LOSSES, PreferenceLogps, preference_loss
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import set_chat_template
from posttrain.models.packing_check import check_packing_isolation
from posttrain.train.loop import BatchSource, Trainer
from posttrain.train.metrics import Metric

# Losses that read only the policy's log-probs.
REFERENCE_FREE_LOSSES = ("simpo", "nll")


def precompute_reference(trainer: Trainer, items: list[dict], split: str, sequences_of) -> torch.Tensor | None:
    """The trainer's precomputed reference log-probs of ``sequences_of(item)`` for every item
    (DPO: chosen and rejected; KTO: the example and its KL sequence), or None when it holds no
    reference or a live one."""
    if trainer.reference is None:
        return None
    return trainer.reference.precompute(
        [sequences_of(item) for item in items], split, pad_token_id=trainer.tokenizer.pad_token_id,
        batch_size=trainer.config.per_device_eval_batch_size, report=trainer.reporter.print,
    )


@dataclass
class PreferenceDataConfig(PrecomputableReferenceConfig):
    """Tokenization options of completion-scored data (DPO, KTO)."""

    max_length: int | None = option(1024, "Longest prompt+completion in tokens; longer ones are truncated (counted) and pairs left without completion tokens dropped.", range="[2, inf)")
    max_prompt_length: int | None = option(None, MAX_PROMPT_LENGTH_HELP, range="[2, inf)")
    overlong: str = option("truncate", "truncate or drop sequences longer than max_length.", choices=OVERLONG_POLICIES)
    add_eos: bool = option(True, "Append EOS to string completions when missing (never doubled).")
    chat_template: str | None = option(None, "A Jinja chat template (or a path to one) replacing the tokenizer's.")
    chat_template_kwargs: dict = option({}, "Extra variables for the chat template.")
    pad_to_multiple_of: int | None = option(None, "Round padded lengths up to a multiple of this.", range="[1, inf)")

    def data_options(self) -> LMDataOptions:
        return LMDataOptions(
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            loss_mode="completion",
            overlong=self.overlong,
            add_eos=self.add_eos,
            chat_template_kwargs=dict(self.chat_template_kwargs),
        )


def _check_loss_types(config: DPOConfig) -> None:
    """Loss names, weights and flip rate checked when the config is made, not at the first step."""
    names = config.loss_types()
    unknown = [name for name in names if name not in PREFERENCE_LOSSES]
    if not names or unknown:
        raise ConfigError(f"option 'loss_type': unknown loss {unknown or names!r}; choose from {', '.join(PREFERENCE_LOSSES)}")
    if config.loss_weights is not None and len(config.loss_weights) != len(names):
        raise ConfigError(f"option 'loss_weights' has {len(config.loss_weights)} weight(s) for {len(names)} loss type(s) {names}; give one per loss type")
    if "robust" in names and config.label_smoothing >= 0.5:
        raise ConfigError(f"option 'label_smoothing' must be below 0.5 for the robust loss, got {config.label_smoothing}")


@dataclass
class DPOConfig(PreferenceDataConfig):
    """DPO options (plus everything in TrainConfig and the reference options)."""

    config_rules: ClassVar[tuple] = (_check_loss_types,)

    learning_rate: float = option(1e-6, "Peak learning rate (AdamW).")
    beta: float = option(0.1, "Strength of the KL anchor to the reference (SimPO: the reward scale, typically 2-10).", range="(0, inf)")
    loss_type: object = option("sigmoid", "Loss name or list of names: sigmoid, robust, hinge, ipo, simpo, nll (the chosen sequences' NLL, as in RPO; combine with a weight). With only simpo/nll no reference is kept.")
    loss_weights: list | None = option(None, "One weight per loss_type when several are combined (default 1 each).")
    label_smoothing: float = option(0.0, "Assumed label-flip rate for sigmoid (conservative DPO) and robust (below 0.5).", range="[0, 1)")
    simpo_gamma: float = option(0.5, "SimPO target reward margin.")
    padding_free: bool = option(False, "Put all chosen and rejected sequences of a micro-batch in one row without padding (position ids restart per sequence; a start-up probe checks that attention does not cross sequences). Pays off with a variable-length attention kernel (flash_attention_2 on GPU); under sdpa/eager attention spans the whole row through a block mask (on CPU: 0.94-0.98x the padded speed over three runs, benchmarks/dpo_throughput.py). See packing.")
    packing: bool = option(False, "Pack the chosen and rejected sequences of a micro-batch into rows of max_length (best-fit decreasing): little padding, and attention bounded by max_length, so it also pays off with sdpa/eager (CPU: 1.14-1.19x the padded speed at 4 pairs per step, two runs).")
    ipo_length_normalize: bool = option(True, "IPO on per-token mean log-ratios (recommended by its authors).")

    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


class PairCollator:
    """Pairs -> the ``2B`` sequences of a batch (all chosen, then all rejected), plus the
    precomputed reference log-probs ``(2B,)`` in the same order when the items carry them.

    ``capacity`` None: ``2B`` right-padded rows. Otherwise the sequences are packed (best-fit
    decreasing) into rows of at most ``capacity`` tokens -- a capacity no row reaches gives one
    padding-free row -- with position ids restarting per sequence, ``sequence_ids`` ``(R, T)``
    naming each token's sequence (0..2B-1; -1 on pads) and ``num_sequences`` = 2B."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, capacity: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.capacity = capacity

    def __call__(self, items: list[dict]) -> dict:
        rows = [item["chosen"] for item in items] + [item["rejected"] for item in items]
        sequences = collate_padded(rows, self.pad_token_id, self.pad_to_multiple_of) if self.capacity is None else self._packed(rows)
        batch = {"sequences": sequences, "pairs": len(items), "num_tokens": sequences["num_tokens"]}
        reference = stack_reference(items)
        if reference is not None:
            batch["ref_logps"] = torch.cat([reference[:, 0], reference[:, 1]])
        return batch

    def _packed(self, rows: list) -> dict:
        lengths = [len(row["input_ids"]) for row in rows]
        bins = best_fit_decreasing(lengths, max(self.capacity, max(lengths)))
        sequences = collate_packed([make_packed_row([rows[i] for i in members]) for members in bins], self.pad_token_id, self.pad_to_multiple_of)
        sequence_ids = torch.full_like(sequences["input_ids"], -1)
        for r, members in enumerate(bins):
            ids = torch.tensor(members)
            sequence_ids[r, : sum(lengths[i] for i in members)] = torch.repeat_interleave(ids, torch.tensor([lengths[i] for i in members]))
        sequences["sequence_ids"], sequences["num_sequences"] = sequence_ids, len(rows)
        return sequences


class DPOTrainer(Trainer):
    """``DPOTrainer(model, config=DPOConfig(...), train_dataset=..., eval_dataset=...).train()``
    or ``DPOTrainer(model, train_dataset=rows, beta=0.1)``. Rows are preference pairs: ``chosen``,
    ``rejected`` and an optional ``prompt`` (strings or message lists)."""

    config_class = DPOConfig
    reference: ReferencePolicy | None = None

    def load_model(self, model):
        policy, self.reference = load_policy(model, self.config, self.accelerator, with_reference=self.needs_reference())
        return policy

    def build_batch_source(self, rows, split: str) -> BatchSource:
        cfg = self.config
        set_chat_template(self.tokenizer, cfg.chat_template)
        prepared = prepare_preference_pairs(rows, self.tokenizer, cfg.data_options())
        self.reporter.print(f"[bold]{split} data[/] ({prepared.data_format}):")
        for line in prepared.lines():
            self.reporter.print(f"  {line}")
        items = attach_reference(prepared.items, precompute_reference(self, prepared.items, split, lambda item: [item["chosen"], item["rejected"]]))
        lengths = [len(i["chosen"]["input_ids"]) + len(i["rejected"]["input_ids"]) for i in items]
        return BatchSource(items, lengths, PairCollator(self.tokenizer.pad_token_id, cfg.pad_to_multiple_of, self._row_capacity()))

    def _row_capacity(self) -> int | None:
        """Tokens per row for packed layouts (None: padded rows)."""
        cfg = self.config
        if cfg.packing and cfg.padding_free:
            raise ValueError("packing and padding_free are two layouts; set one of them")
        if cfg.packing:
            if not cfg.max_length:
                raise ValueError("packing needs max_length (the capacity of a packed row)")
            return cfg.max_length
        return sys.maxsize if cfg.padding_free else None

    def needs_reference(self) -> bool:
        return any(name not in REFERENCE_FREE_LOSSES for name in self.config.loss_types())

    def wrap_model(self, model) -> torch.nn.Module:
        if self.config.padding_free or self.config.packing:
            # the reference shares the architecture; padding-free batches are one row
            check_packing_isolation(model, batch_rows=1 if self.config.padding_free else 2, device=self.accelerator.device)
        return TokenLogProbs.for_config(model, self.config)

    def count_units(self, batch) -> torch.Tensor:
        return torch.tensor(float(batch["pairs"]))

    def pair_logps(self, module, batch) -> PreferenceLogps:
        """Policy (and, unless every loss is reference-free, reference) log-probs of a batch."""
        sequences, pairs = batch["sequences"], batch["pairs"]
        # only the completion tokens are summed: the head skips prompts and pads
        stats = module(sequences["input_ids"], sequences["position_ids"], positions=sequences.get("trained_positions"))
        packed = sequences.get("sequence_ids"), sequences.get("num_sequences")
        policy = sequence_logps(stats.logps, sequences["loss_weights"], *packed)
        lengths = sequence_logps(torch.ones_like(stats.logps), sequences["loss_weights"], *packed)
        reference = self.reference.batch_logps(module, batch, sequences) if self.reference is not None else None
        return PreferenceLogps(
            policy_chosen=policy[:pairs],
            policy_rejected=policy[pairs:],
            ref_chosen=None if reference is None else reference[:pairs],
            ref_rejected=None if reference is None else reference[pairs:],
            chosen_lengths=lengths[:pairs],
            rejected_lengths=lengths[pairs:],
        )

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        cfg = self.config
        logps = self.pair_logps(module, batch)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            logps,
            cfg.loss_types(),
            cfg.loss_weights,
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
            gamma=cfg.simpo_gamma,
            ipo_length_normalize=cfg.ipo_length_normalize,
        )
        pairs = batch["pairs"]
        metrics = {
            "loss": Metric.mean(losses.sum(), pairs),
            "rewards/chosen": Metric.mean(chosen_rewards.sum(), pairs),
            "rewards/rejected": Metric.mean(rejected_rewards.sum(), pairs),
            "rewards/accuracies": Metric.mean((chosen_rewards > rejected_rewards).float().sum(), pairs),
            "rewards/margins": Metric.mean((chosen_rewards - rejected_rewards).sum(), pairs),
            "logps/chosen": Metric.mean(logps.policy_chosen.sum(), pairs),
            "logps/rejected": Metric.mean(logps.policy_rejected.sum(), pairs),
        }
        return losses.sum(), metrics
