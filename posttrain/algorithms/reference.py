"""The reference policy of DPO and KTO, in three interchangeable forms.

- ``model``: a frozen copy of the starting weights (or ``ref_model``), run next to the policy.
- ``adapters_disabled``: with LoRA, the policy itself with its adapters switched off. The
  reference *is* the frozen base, so no second copy of the weights is held in memory.
- ``precomputed``: reference log-probs of every training sequence computed once before training
  (with whichever of the two above would otherwise be used), cached on disk under a key made of
  the reference weights and the exact token ids, then read from the batch. A rerun, a second
  epoch or a new output directory reuses the file; any change to the weights, data, template or
  max_length changes the key.

All three give the same numbers (tested); they differ in memory and compute only.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from posttrain.config import TrainConfig, option
from posttrain.data.collate import collate_padded
from posttrain.data.example import TokenizedExample
from posttrain.errors import ConfigError
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import apply_lora, enable_activation_checkpointing, is_peft_model, load_causal_lm
from posttrain.ops import masked_sum
from posttrain.train.loop import Trainer
from posttrain.train.sharding import shard_frozen

REFERENCE_MODES = ("auto", "model", "adapters_disabled", "precomputed")


@dataclass
class ReferenceConfig(TrainConfig):
    """Options shared by every trainer with a reference policy (DPO, KTO)."""

    reference_mode: str = option("auto", "Reference policy: auto (adapters_disabled with LoRA, else model), model (a frozen copy), adapters_disabled (LoRA only: the policy without adapters, no second copy), precomputed (log-probs computed once and cached on disk).", choices=REFERENCE_MODES)
    ref_model: str | None = option(None, "Path of the reference model; default: the starting weights of the policy.")
    precompute_source: str = option("auto", "What computes the log-probs in precomputed mode: auto, model or adapters_disabled.", choices=("auto", "model", "adapters_disabled"))
    disable_dropout: bool = option(True, "Switch off dropout in policy and reference (as the DPO authors' code does): otherwise every log-ratio carries dropout noise and a policy equal to its reference does not score ln 2.")
    ref_logps_cache_dir: str | None = option(None, "Directory for cached reference log-probs (default: $POSTTRAIN_CACHE/ref_logps or ~/.cache/posttrain/ref_logps).")


def sequence_logps(
    token_logps: torch.Tensor, weights: torch.Tensor, sequence_ids: torch.Tensor | None = None, num_sequences: int | None = None
) -> torch.Tensor:
    """Summed log-prob of each sequence's trained tokens.

    Padded rows (``sequence_ids`` None): one sequence per row, ``(N, T), (N, T) -> (N,)``.
    Packed rows: ``sequence_ids`` ``(R, T)`` numbers every token's sequence ``0..S-1`` (-1 on
    pads) and ``num_sequences`` is ``S`` (given, not read off the ids, which would wait for the
    device in every training step); the result is ``(S,)``.
    """
    if sequence_ids is None:
        return masked_sum(token_logps, (weights > 0), dim=1)
    trained = ((weights > 0) & (sequence_ids >= 0)).reshape(-1)
    # every token is added (0 when untrained): boolean indexing would wait for the device
    values = torch.where(trained, token_logps.reshape(-1), 0.0)
    sums = torch.zeros(num_sequences, dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, sequence_ids.reshape(-1).clamp(min=0), values)


def _cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    root = os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain"
    return Path(root) / "ref_logps"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap fingerprint of every tensor of ``model``: name, shape, dtype, and a strided
    sample of 64 values plus the sum (changing any trained weight changes the sum)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)].float().cpu()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{flat.float().sum().item():.9e}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def sequences_fingerprint(sequences: Sequence[Sequence[TokenizedExample]]) -> str:
    """Fingerprint of the exact token ids and trained positions of every sequence."""
    digest = hashlib.sha256()
    for group in sequences:
        for example in group:
            digest.update(len(example["input_ids"]).to_bytes(4, "little"))
            digest.update(torch.tensor(example["input_ids"], dtype=torch.int64).numpy().tobytes())
            digest.update(bytes(1 if w else 0 for w in example["loss_weights"]))
    return digest.hexdigest()


class ReferenceTrainer(Trainer):
    """A :class:`~posttrain.train.loop.Trainer` whose objective compares the policy with a
    reference. Subclasses list, per dataset item, the sequences that need reference log-probs
    (:meth:`reference_sequences`) and read them with :meth:`reference_logps`."""

    def load_model(self, model):
        cfg = self.config
        if cfg.reference_mode not in REFERENCE_MODES:
            raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {cfg.reference_mode!r}")
        base = load_causal_lm(model, model_dtype=cfg.model_dtype, attn_implementation=cfg.attn_implementation)
        lora = cfg.use_lora or is_peft_model(base)
        mode = cfg.reference_mode
        if not self.needs_reference():
            # reference-free objective (e.g. SimPO): no frozen copy, no precomputed log-probs
            self.reference_mode, self._reference_source, self.ref_model, self._ref_logps_module = "none", None, None, None
            return self._finish_policy(base)
        if mode == "auto":
            mode = "adapters_disabled" if lora else "model"
        source = cfg.precompute_source if mode == "precomputed" else mode
        if source == "auto":
            source = "adapters_disabled" if lora else "model"
        if source == "adapters_disabled" and not lora:
            raise ConfigError("reference 'adapters_disabled' needs LoRA (use_lora=true or a peft model); use 'model' otherwise")
        self.reference_mode, self._reference_source = mode, source
        self.ref_model = None
        if source == "model":
            if cfg.ref_model is not None:
                self.ref_model = load_causal_lm(cfg.ref_model, model_dtype=cfg.model_dtype, attn_implementation=cfg.attn_implementation)
            else:
                self.ref_model = copy.deepcopy(base)
            self.ref_model.eval().requires_grad_(False)
        self._ref_logps_module = None
        return self._finish_policy(base)

    def _finish_policy(self, base):
        cfg = self.config
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(base, cfg.gradient_checkpointing_fraction)
        if cfg.use_lora and not is_peft_model(base):
            base = apply_lora(base, cfg)
        return base

    def needs_reference(self) -> bool:
        """Whether the objective reads reference log-probs at all (DPO with only reference-free
        losses does not)."""
        return True

    def train(self):
        self.release_reference_copy()
        return super().train()

    # ------------------------------------------------------------------ computing

    def _reference_module(self) -> TokenLogProbs:
        if self._ref_logps_module is None:
            # Placed by hand, never through accelerator.prepare_model: that registers the frozen
            # copy for checkpointing, and accelerate pairs a checkpoint's model files with the
            # registered models by position. A run that prepared the copy first (to precompute)
            # saved it as model 0; a resumed process that read the log-probs from the cache had
            # only the policy registered and loaded the reference's weights into it.
            self.ref_model.to(self.accelerator.device)
            self._ref_logps_module = TokenLogProbs.for_config(self.ref_model, self.config)
            if self.accelerator.is_fsdp2:  # sharded like the policy, block by block
                self._ref_logps_module = shard_frozen(self.accelerator, self._ref_logps_module)
        return self._ref_logps_module

    @torch.no_grad()
    def compute_reference(
        self, input_ids, position_ids, weights, policy_module=None, sequence_ids=None, num_sequences=None, positions=None,
        reference_module=None,
    ) -> torch.Tensor:
        """Reference log-probs ``(N,)`` of a collated batch of sequences (``sequence_ids`` and
        ``num_sequences`` for packed rows, see :func:`sequence_logps`), with the live reference
        (copy, or the policy with adapters disabled). ``positions``: the trained tokens' flat
        indices (the collator's ``trained_positions``), so the head skips the others.
        ``reference_module``: the copy's module to run instead of the training one (precomputing
        runs the whole copy on each process's own share, where a sharded one would need every
        process in each forward)."""
        with self.accelerator.autocast():  # the mixed precision of the policy's forward
            if self._reference_source == "model":
                module = reference_module if reference_module is not None else self._reference_module()
                stats = module(input_ids, position_ids, positions=positions)
            else:
                module = policy_module if policy_module is not None else TokenLogProbs.for_config(self.model, self.config)
                with self.model.disable_adapter():
                    stats = module(input_ids, position_ids, positions=positions)
        return sequence_logps(stats.logps, weights, sequence_ids, num_sequences).float()

    def reference_logps(self, module, batch, sequence_batch: dict) -> torch.Tensor:
        """Reference log-probs of ``sequence_batch`` (``(N,)``): read from ``batch["ref_logps"]``
        in precomputed mode, computed otherwise."""
        if self.reference_mode == "precomputed":
            return batch["ref_logps"].to(sequence_batch["input_ids"].device)
        return self.compute_reference(
            sequence_batch["input_ids"], sequence_batch["position_ids"], sequence_batch["loss_weights"], module,
            sequence_batch.get("sequence_ids"), sequence_batch.get("num_sequences"), sequence_batch.get("trained_positions"),
        )

    # ------------------------------------------------------------------ precomputing

    def reference_sequences(self, item: dict) -> list[TokenizedExample]:
        raise TypeError(f"{type(self).__name__} must define reference_sequences")

    def precompute_reference(self, items: list[dict], split: str) -> torch.Tensor | None:
        """In precomputed mode, ``(len(items), k)`` reference log-probs of every item's
        sequences, loaded from the cache or computed and cached; None in other modes."""
        if self.reference_mode != "precomputed":
            return None
        groups = [self.reference_sequences(item) for item in items]
        key_source = self.ref_model if self.ref_model is not None else self.model
        key = hashlib.sha256(
            f"{weights_fingerprint(key_source)}|{self._reference_source}|{sequences_fingerprint(groups)}".encode()
        ).hexdigest()[:32]
        path = _cache_dir(self.config.ref_logps_cache_dir) / f"{key}.pt"
        # The main process decides and shares what it read, so every process takes the same
        # branch (the collective calls below would hang otherwise), even without a shared disk.
        cached = [torch.load(path) if self.accelerator.is_main_process and path.exists() else None]
        cached = broadcast_object_list(cached)
        if cached[0] is not None:
            self.reporter.print(f"{split}: reference log-probs read from cache {path}")
            return cached[0]
        values = self._compute_all(groups)
        if self.accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            torch.save(values, staging)
            staging.replace(path)
        self.reporter.print(f"{split}: computed reference log-probs for {len(items)} items, cached in {path}")
        return values

    def _compute_all(self, groups: list[list[TokenizedExample]]) -> torch.Tensor:
        """``(len(groups), k)`` reference log-probs; each process computes a contiguous share of
        the sequences and all processes receive every value."""
        device = self.accelerator.device
        (self.ref_model if self._reference_source == "model" else self.model).to(device)
        sharded_copy = self._reference_source == "model" and self.accelerator.is_fsdp2
        whole = TokenLogProbs.for_config(self.ref_model, self.config) if sharded_copy else None
        flat = [example for group in groups for example in group]
        with self.accelerator.split_between_processes(list(range(len(flat)))) as mine:
            shard = [flat[i] for i in mine]
        out = []
        size = self.config.per_device_eval_batch_size
        for start in range(0, len(shard), size):
            batch = collate_padded(shard[start : start + size], self.tokenizer.pad_token_id)
            inputs = (batch["input_ids"].to(device), batch["position_ids"].to(device), batch["loss_weights"].to(device))
            out.extend(self.compute_reference(*inputs, reference_module=whole).cpu().tolist())
        # gather_object concatenates the processes' lists in rank order: the original order
        return torch.tensor(gather_object(out), dtype=torch.float32).reshape(len(groups), -1)

    def release_reference_copy(self) -> None:
        """Free the frozen copy once precomputing made it unnecessary."""
        if self.reference_mode == "precomputed":
            self.ref_model = None
            self._ref_logps_module = None


def attach_reference(items: list[dict], values: torch.Tensor | None) -> list[dict]:
    """Copy precomputed ``values[i]`` into ``items[i]["ref_logps"]`` (no-op when None)."""
    if values is not None:
        for item, row in zip(items, values):
            item["ref_logps"] = row
    return items


def stack_reference(items: Sequence[dict]) -> torch.Tensor | None:
    """``(B, k)`` precomputed reference log-probs of a batch of items, or None."""
    if "ref_logps" not in items[0]:
        return None
    return torch.stack([item["ref_logps"] for item in items])

