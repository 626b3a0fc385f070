"""KTO: learning from completions labelled desirable or undesirable, no pairs needed
(Ethayarajh et al. 2024; the loss is :func:`posttrain.losses.kto.kto_loss`).

The KL reference point z0 is estimated from *mismatched* (prompt, completion) pairs: every row
is given, once at preparation, a partner row with a different prompt, and its "KL sequence" is
its own prompt followed by the partner's completion. Before an optimizer step, z0 is estimated
over the KL sequences of the WHOLE accumulated batch on all processes (no gradient), so it does
not depend on how the batch is split: per-device batch 1 with gradient accumulation gets the
same z0 as one large batch. Fixed partners also make the KL sequences precomputable, so all three
reference modes work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.algorithms.dpo import PreferenceDataConfig, precompute_reference
from posttrain.algorithms.reference import ReferencePolicy, attach_reference, load_policy, sequence_logps, stack_reference
from posttrain.config import option
from posttrain.data.collate import collate_padded
from posttrain.data.example import TokenizedExample
from posttrain.data.preference import completion_start, prepare_unpaired
from posttrain.errors import DataError
from posttrain.losses.kto import check_weight_ratio, kto_loss
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import set_chat_template
from posttrain.train.loop import BatchSource, Trainer
from posttrain.train.metrics import Metric

# How far to look for a partner with a different prompt before giving up (all prompts equal).
PARTNER_SEARCH = 16


@dataclass
class KTOConfig(PreferenceDataConfig):
    """KTO options (plus everything in TrainConfig and the reference options)."""

    learning_rate: float = option(1e-6, "Peak learning rate (AdamW).")
    beta: float = option(0.1, "Scale of the log-ratio, as in DPO.", range="(0, inf)")
    desirable_weight: float = option(1.0, "lambda_D: weight of desirable examples' loss.", range="(0, inf)")
    undesirable_weight: float = option(1.0, "lambda_U: weight of undesirable examples' loss. Keep desirable_weight*n_D / (undesirable_weight*n_U) in [1, 4/3] (paper, eq. 8); a warning says when it is not.", range="(0, inf)")


def kl_sequence(example: TokenizedExample, partner: TokenizedExample, max_length: int | None) -> TokenizedExample:
    """``example``'s prompt followed by ``partner``'s completion (weights on that completion),
    cut to ``max_length``."""
    start, partner_start = completion_start(example), completion_start(partner)
    ids = example["input_ids"][:start] + partner["input_ids"][partner_start:]
    weights = [0.0] * start + partner["loss_weights"][partner_start:]
    if max_length is not None:
        ids, weights = ids[:max_length], weights[:max_length]
    return {"input_ids": ids, "loss_weights": weights, "turn_index": [-1] * len(ids), "row": example["row"]}


def assign_partners(items: list[dict]) -> list[int]:
    """For each item, the index of an item with a different prompt (half the dataset away, then
    the next ones), so converted pairs (chosen and rejected of one prompt, adjacent) never pair up."""
    count = len(items)
    prompts = [tuple(i["example"]["input_ids"][: completion_start(i["example"])]) for i in items]
    partners = []
    for index in range(count):
        candidates = [(index + count // 2 + k) % count for k in range(min(PARTNER_SEARCH, count))]
        different = [j for j in candidates if j != index and prompts[j] != prompts[index]]
        if not different:
            raise DataError(
                f"row {items[index]['row']}: no row with a different prompt found for KTO's KL estimate; "
                "KTO needs a dataset with several distinct prompts"
            )
        partners.append(different[0])
    return partners


class UnpairedCollator:
    """Items -> ``examples`` (B rows) and ``kl`` (their B KL sequences) as padded batches, the
    labels ``(B,)`` and, when precomputed, reference log-probs ``ref_logps`` and ``ref_kl_logps``."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict:
        examples = collate_padded([i["example"] for i in items], self.pad_token_id, self.pad_to_multiple_of)
        kl = collate_padded([i["kl"] for i in items], self.pad_token_id, self.pad_to_multiple_of)
        batch = {
            "examples": examples,
            "kl": kl,
            "labels": torch.tensor([i["label"] for i in items]),
            "size": len(items),
            "num_tokens": examples["num_tokens"],
        }
        reference = stack_reference(items)
        if reference is not None:
            batch["ref_logps"], batch["ref_kl_logps"] = reference[:, 0], reference[:, 1]
        return batch


class KTOTrainer(Trainer):
    """``KTOTrainer(model, config=KTOConfig(...), train_dataset=...).train()``. Rows are
    ``prompt``, ``completion``, ``label`` (bool); preference pairs are converted (chosen ->
    desirable, rejected -> undesirable)."""

    config_class = KTOConfig
    reference: ReferencePolicy | None = None

    def load_model(self, model):
        policy, self.reference = load_policy(model, self.config, self.accelerator, with_reference=True)
        return policy

    def build_batch_source(self, rows, split: str) -> BatchSource:
        cfg = self.config
        set_chat_template(self.tokenizer, cfg.chat_template)
        prepared = prepare_unpaired(rows, self.tokenizer, cfg.data_options())
        items = prepared.items
        if len(items) < 2:
            raise DataError("KTO needs at least 2 rows: the KL reference point pairs each prompt with another row's completion")
        for item, partner in zip(items, assign_partners(items)):
            item["kl"] = kl_sequence(item["example"], items[partner]["example"], cfg.max_length)
        desirable = sum(1 for i in items if i["label"])
        self.reporter.print(f"[bold]{split} data[/] ({prepared.data_format}): {desirable} desirable, {len(items) - desirable} undesirable")
        for line in prepared.lines():
            self.reporter.print(f"  {line}")
        if split == "train":
            problem = check_weight_ratio(desirable, len(items) - desirable, cfg.desirable_weight, cfg.undesirable_weight)
            if problem:  # on the run's console only: a Python warning too would print it twice
                self.reporter.print(f"[yellow]warning:[/] {problem}")
        items = attach_reference(items, precompute_reference(self, items, split, lambda item: [item["example"], item["kl"]]))
        lengths = [len(i["example"]["input_ids"]) for i in items]
        return BatchSource(items, lengths, UnpairedCollator(self.tokenizer.pad_token_id, cfg.pad_to_multiple_of))

    def wrap_model(self, model) -> torch.nn.Module:
        self._window_kl = None
        return TokenLogProbs.for_config(model, self.config)

    def count_units(self, batch) -> torch.Tensor:
        return torch.tensor(float(batch["size"]))

    @torch.no_grad()
    def _kl_sum(self, module, batch) -> torch.Tensor:
        """Sum over the batch's KL sequences of ``log pi - log ref`` (no gradient)."""
        kl = batch["kl"]
        scored = kl.get("trained_positions")  # the completions: the head skips prompts and pads
        policy = sequence_logps(module(kl["input_ids"], kl["position_ids"], positions=scored).logps, kl["loss_weights"])
        return (policy.float() - self.reference.batch_logps(module, batch, kl, key="ref_kl_logps")).sum()

    def _reference_point(self, module, batches: list) -> torch.Tensor:
        """z0 = max(0, mean KL log-ratio) over ``batches`` on every process."""
        local = torch.stack([sum(self._kl_sum(module, b) for b in batches), torch.tensor(float(sum(b["size"] for b in batches)), device=self.accelerator.device)])
        total, count = self.accelerator.reduce(local, reduction="sum")
        return (total / count).clamp(min=0.0)

    def before_accumulation(self, module, window: list) -> None:
        self._window_kl = self._reference_point(module, window)

    def compute_loss(self, module, batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        cfg = self.config
        examples = batch["examples"]
        stats = module(examples["input_ids"], examples["position_ids"], positions=examples.get("trained_positions"))
        policy = sequence_logps(stats.logps, examples["loss_weights"])
        reference = self.reference.batch_logps(module, batch, examples)
        # Training steps use the window's z0; evaluation batches estimate their own.
        z0 = self._window_kl if module.training and self._window_kl is not None else self._reference_point(module, [batch])
        labels = batch["labels"].to(policy.device)
        losses, rewards = kto_loss(policy, reference, labels, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        desirable, undesirable = labels.float(), (~labels.bool()).float()
        metrics = {
            "loss": Metric.mean(losses.sum(), batch["size"]),
            "kl": Metric.mean(z0),
            "rewards/chosen": Metric.mean((rewards * desirable).sum(), desirable.sum()),
            "rewards/rejected": Metric.mean((rewards * undesirable).sum(), undesirable.sum()),
            "logps/chosen": Metric.mean((policy.detach() * desirable).sum(), desirable.sum()),
            "logps/rejected": Metric.mean((policy.detach() * undesirable).sum(), undesirable.sum()),
        }
        return losses.sum(), metrics
