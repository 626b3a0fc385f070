"""The reference policy: a component that a trainer holds when its objective compares the policy
with a reference (DPO, KTO; GRPO and PPO with a KL term) and does not hold otherwise
(docs/design.md, "The reference policy").

Its forms:

- ``model``: a frozen copy of the starting weights (or ``ref_model``), run next to the policy.
- ``adapters_disabled``: with LoRA, the policy itself with its adapters switched off. The
  reference *is* the frozen base, so no second copy of the weights is held in memory.
- ``precomputed`` (fixed completions only: DPO, KTO): reference log-probs of every training
  sequence computed once before training (with whichever of the two above would otherwise be
  used), cached on disk under a key made of the reference weights and the exact token ids, then
  read from the batch. A rerun, a second epoch or a new output directory reuses the file; any
  change to the weights, data, template or max_length changes the key.

All give the same numbers (tested); they differ in memory and compute only.
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
from posttrain.models.loading import adapters_disabled, disable_dropout, is_peft_model, load_causal_lm, prepare_for_training
from posttrain.ops import masked_sum
from posttrain.train.sharding import shard_frozen

LIVE_MODES = ("auto", "model", "adapters_disabled")
REFERENCE_MODES = (*LIVE_MODES, "precomputed")


@dataclass
class ReferenceConfig(TrainConfig):
    """Options of every trainer that may hold a reference policy."""

    reference_mode: str = option("auto", "Reference policy: auto (adapters_disabled with LoRA, else model), model (a frozen copy), adapters_disabled (LoRA only: the policy without adapters, no second copy).", choices=LIVE_MODES)
    ref_model: str | None = option(None, "Path of the reference model; default: the starting weights of the policy.")
    disable_dropout: bool = option(True, "Switch off dropout in policy and reference (as the DPO authors' code does): otherwise every log-ratio carries dropout noise and a policy equal to its reference does not score ln 2.")


@dataclass
class PrecomputableReferenceConfig(ReferenceConfig):
    """Reference options of trainers on fixed completions (DPO, KTO), whose reference log-probs
    can be computed once before training."""

    reference_mode: str = option("auto", "Reference policy: auto (adapters_disabled with LoRA, else model), model (a frozen copy), adapters_disabled (LoRA only: the policy without adapters, no second copy), precomputed (log-probs computed once and cached on disk).", choices=REFERENCE_MODES)
    precompute_source: str = option("auto", "What computes the log-probs in precomputed mode: auto, model or adapters_disabled.", choices=LIVE_MODES)
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


def load_policy(source, config: TrainConfig, accelerator, with_reference: bool):
    """``(policy, reference)``: the causal LM to train from ``source`` (activation checkpointing
    and LoRA applied as configured) and, when ``with_reference``, its :class:`ReferencePolicy`
    (taken from the weights as loaded, before any adapter exists), else None."""
    base = load_causal_lm(source, model_dtype=config.model_dtype, attn_implementation=config.attn_implementation)
    reference = ReferencePolicy.create(config, base, accelerator) if with_reference else None
    policy = prepare_for_training(base, config)
    if reference is not None:
        reference.policy = policy
    return policy, reference


class ReferencePolicy:
    """``mode`` (``model``, ``adapters_disabled``, ``precomputed``), ``source`` (what computes its
    log-probs: ``model`` or ``adapters_disabled``), ``model`` (the frozen copy, or None), ``policy``
    (the trained model, whose adapters ``adapters_disabled`` switches off)."""

    def __init__(self, mode: str, source: str, model, config: TrainConfig, accelerator):
        self.mode, self.source, self.model = mode, source, model
        self.policy = None
        self._config, self._accelerator = config, accelerator
        self._frozen = None  # TokenLogProbs over the copy, placed on the device at first use
        self._base_module = None  # TokenLogProbs over the policy, when the caller gives none

    @classmethod
    def create(cls, config: TrainConfig, base, accelerator) -> ReferencePolicy:
        """The reference ``config`` asks for, for a policy loaded as ``base``."""
        lora = config.use_lora or is_peft_model(base)
        mode = config.reference_mode
        if mode == "auto":
            mode = "adapters_disabled" if lora else "model"
        source = getattr(config, "precompute_source", "auto") if mode == "precomputed" else mode
        if source == "auto":
            source = "adapters_disabled" if lora else "model"
        if source == "adapters_disabled" and not lora:
            raise ConfigError("reference 'adapters_disabled' needs LoRA (use_lora=true or a peft model); use 'model' otherwise")
        model = None
        if source == "model":
            if config.ref_model is not None:
                model = load_causal_lm(config.ref_model, model_dtype=config.model_dtype, attn_implementation=config.attn_implementation)
            else:
                model = copy.deepcopy(base)
            model.eval().requires_grad_(False)
            if config.disable_dropout:
                disable_dropout(model)
        return cls(mode, source, model, config, accelerator)

    # ------------------------------------------------------------------ computing

    def token_logps(
        self, policy_module, input_ids, position_ids, *, temperature: float = 1.0, positions=None, frozen_module=None
    ) -> torch.Tensor:
        """``(R, T)`` per-token log-probs, in the policy's mixed precision, without grad;
        ``policy_module`` (a :class:`TokenLogProbs` over the policy; None: one is made) runs with
        adapters off in ``adapters_disabled`` form; ``positions``: flat indices of the scored tokens.
        ``frozen_module``: the copy's module to run instead of the training one (precomputing runs
        the whole copy on each process's own share, where a sharded one needs every process in
        each forward)."""
        with torch.no_grad(), self._accelerator.autocast():
            if self.source == "model":
                module = frozen_module if frozen_module is not None else self._frozen_module()
                return module(input_ids, position_ids, temperature=temperature, positions=positions).logps
            module = policy_module if policy_module is not None else self._policy_module()
            with adapters_disabled(self.policy):
                return module(input_ids, position_ids, temperature=temperature, positions=positions).logps

    def sequence_logps(self, policy_module, sequences: dict, frozen_module=None) -> torch.Tensor:
        """``(N,)`` summed log-probs of a collated batch (``input_ids``, ``position_ids``,
        ``loss_weights``; ``sequence_ids``, ``num_sequences``, ``trained_positions`` when given)."""
        token_logps = self.token_logps(
            policy_module, sequences["input_ids"], sequences["position_ids"], positions=sequences.get("trained_positions"), frozen_module=frozen_module
        )
        return sequence_logps(token_logps, sequences["loss_weights"], sequences.get("sequence_ids"), sequences.get("num_sequences")).float()

    def batch_logps(self, policy_module, batch: dict, sequences: dict, key: str = "ref_logps") -> torch.Tensor:
        """``(N,)`` log-probs of ``sequences``: ``batch[key]`` when precomputed, else computed."""
        if self.mode == "precomputed":
            self.release_copy()  # training has begun: the copy's work is done
            return batch[key].to(sequences["input_ids"].device)
        return self.sequence_logps(policy_module, sequences)

    def _frozen_module(self) -> TokenLogProbs:
        if self._frozen is None:
            # Placed by hand, never through accelerator.prepare_model: that registers the frozen
            # copy for checkpointing, and accelerate pairs a checkpoint's model files with the
            # registered models by position. A run that prepared the copy first (to precompute)
            # saved it as model 0; a resumed process that read the log-probs from the cache had
            # only the policy registered and loaded the reference's weights into it.
            self.model.to(self._accelerator.device)
            self._frozen = TokenLogProbs.for_config(self.model, self._config)
            if self._accelerator.is_fsdp2:  # sharded like the policy, block by block
                self._frozen = shard_frozen(self._accelerator, self._frozen)
        return self._frozen

    def _policy_module(self) -> TokenLogProbs:
        if self._base_module is None:
            self._base_module = TokenLogProbs.for_config(self.policy, self._config)
        return self._base_module

    # ------------------------------------------------------------------ precomputing

    def precompute(self, groups: list[list[TokenizedExample]], split: str, *, pad_token_id: int, batch_size: int, report) -> torch.Tensor | None:
        """Precomputed form: ``(len(groups), k)`` log-probs of each item's ``k`` sequences, from
        the cache or computed and cached (``report(line)`` says which); else None."""
        if self.mode != "precomputed":
            return None
        key_source = self.model if self.model is not None else self.policy
        key = hashlib.sha256(f"{weights_fingerprint(key_source)}|{self.source}|{sequences_fingerprint(groups)}".encode()).hexdigest()[:32]
        path = _cache_dir(self._config.ref_logps_cache_dir) / f"{key}.pt"
        acc = self._accelerator
        # The main process decides and shares what it read, so every process takes the same
        # branch (the collective calls below would hang otherwise), even without a shared disk.
        cached = broadcast_object_list([torch.load(path) if acc.is_main_process and path.exists() else None])
        if cached[0] is not None:
            report(f"{split}: reference log-probs read from cache {path}")
            return cached[0]
        values = self._compute_all(groups, pad_token_id, batch_size)
        if acc.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            torch.save(values, staging)
            staging.replace(path)
        report(f"{split}: computed reference log-probs for {len(groups)} items, cached in {path}")
        return values

    def _compute_all(self, groups: list[list[TokenizedExample]], pad_token_id: int, batch_size: int) -> torch.Tensor:
        """``(len(groups), k)`` reference log-probs; each process computes a contiguous share of
        the sequences and all processes receive every value."""
        acc = self._accelerator
        (self.model if self.source == "model" else self.policy).to(acc.device)
        whole = TokenLogProbs.for_config(self.model, self._config) if self.source == "model" and acc.is_fsdp2 else None
        flat = [example for group in groups for example in group]
        with acc.split_between_processes(list(range(len(flat)))) as mine:
            shard = [flat[i] for i in mine]
        out = []
        for start in range(0, len(shard), batch_size):
            batch = collate_padded(shard[start : start + batch_size], pad_token_id)
            sequences = {name: batch[name].to(acc.device) for name in ("input_ids", "position_ids", "loss_weights")}
            out.extend(self.sequence_logps(None, sequences, frozen_module=whole).cpu().tolist())
        # gather_object concatenates the processes' lists in rank order: the original order
        return torch.tensor(gather_object(out), dtype=torch.float32).reshape(len(groups), -1)

    def release_copy(self) -> None:
        """In precomputed form, free the frozen copy once its log-probs are cached."""
        if self.mode == "precomputed":
            self.model = self._frozen = None


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
