"""Batch collation for causal LMs: padded, packed and padding-free batches.

Every layout gives the same dict of tensors:

- ``input_ids`` ``(B, T)`` long, pads filled with ``pad_token_id``;
- ``position_ids`` ``(B, T)`` long, restarting at 0 at the start of every example;
- ``loss_weights`` ``(B, T)`` float32, the examples' weights and 0 on every pad;
- ``turn_index`` ``(B, T)`` long, -1 on every pad;
- ``num_tokens``: int, how many real (non-pad) tokens the batch holds;
- ``trained_positions`` ``(n,)`` long: flat indices into ``(B, T)`` of the tokens with a nonzero
  loss weight (:func:`trained_positions`), so the LM head can run on those tokens only; None
  when some row weighs its first token (no language-model loss can: reward-model examples
  do, and do not use it);
- ``loss_weight_sum``: float, the sum of ``loss_weights``, counted here on the host so that the
  training loop never has to read it back from the device.

There is deliberately **no** ``attention_mask``. Why that is correct:

- Padding is always on the right. Under causal attention a real token only sees earlier
  positions, and every pad comes after every real token of its row, so no real token ever sees
  a pad. Pads see real tokens, but their outputs carry loss weight 0.
- Examples packed into one row are told apart by their position ids. With ``attention_mask=None``
  and no KV cache, ``transformers`` (measured with 5.23 for Llama, Qwen2 and GPT-2 under ``sdpa``
  and ``eager``) finds where the position ids stop increasing by exactly 1 and builds a
  block-diagonal causal mask itself (``masking_utils.find_packed_sequence_indices``); the max logit
  difference to separate forwards is ~1e-7. FlashAttention-2 turns the same position ids into
  varlen sequence boundaries, but only for one-row batches (``padding_free``). The model must be
  called with ``use_cache=False``: with a cache the position ids are ignored for masking and
  packed examples attend to each other (logit error ~0.2-0.7).
  :func:`posttrain.models.packing_check.check_packing_isolation` verifies this at start-up.
- The pad tail of a packed row *continues* the last example's positions instead of starting a
  new one. The tail sits after all real tokens, so causality alone keeps it invisible to them, and
  since it is not a new segment FlashAttention's varlen path does not spend a sequence on it.
  Continuing positions never exceed ``T - 1``, the largest position a padded batch would use.
- Loss weights come from the examples' ``loss_weights``, never from comparing ids with the pad
  id, so when the pad token is also EOS the final EOS keeps its weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from posttrain.data.example import TokenizedExample
from posttrain.data.packing import PackedRow, check_example, make_packed_row

MODES = ("padded", "packed", "padding_free")


def padded_length(longest: int, pad_to_multiple_of: int | None) -> int:
    """``longest`` rounded up to a multiple of ``pad_to_multiple_of`` (unchanged when None)."""
    if pad_to_multiple_of is None:
        return longest
    if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
    return -(-longest // pad_to_multiple_of) * pad_to_multiple_of


def _segment_positions(seq_lengths: Sequence[int], total: int) -> torch.Tensor:
    """Position ids ``(total,)`` restarting at 0 at each segment; positions past the last segment
    continue it. E.g. seq_lengths [3, 2], total 7 -> [0, 1, 2, 0, 1, 2, 3]."""
    lengths = torch.tensor(list(seq_lengths), dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    covered = int(lengths.sum())
    # the tail [covered, total) belongs to the last segment (a new one when there is none)
    lengths[-1] += total - covered
    return torch.arange(total) - torch.repeat_interleave(starts, lengths)


def _batch(rows: Sequence[Mapping], seq_lengths: Sequence[Sequence[int]], pad_token_id: int, width: int) -> dict:
    """Right-pad ``rows`` (dicts with the three per-token lists) to ``width`` and build positions
    from each row's ``seq_lengths``."""
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to the EOS token) before batching")
    size = (len(rows), width)
    batch = {
        "input_ids": torch.full(size, pad_token_id, dtype=torch.long),
        "position_ids": torch.empty(size, dtype=torch.long),
        "loss_weights": torch.zeros(size, dtype=torch.float32),
        "turn_index": torch.full(size, -1, dtype=torch.long),
    }
    num_tokens = 0
    for b, (row, lengths) in enumerate(zip(rows, seq_lengths)):
        n = len(row["input_ids"])
        num_tokens += n
        batch["input_ids"][b, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        batch["loss_weights"][b, :n] = torch.tensor(row["loss_weights"], dtype=torch.float32)
        batch["turn_index"][b, :n] = torch.tensor(row["turn_index"], dtype=torch.long)
        batch["position_ids"][b] = _segment_positions(lengths if lengths else [0], width)
    batch["num_tokens"] = num_tokens
    first_weighted = bool((batch["loss_weights"][:, 0] != 0).any()) if width else False
    batch["trained_positions"] = None if first_weighted else trained_positions(batch["loss_weights"])
    batch["loss_weight_sum"] = float(batch["loss_weights"].sum())
    return batch


def trained_positions(loss_weights: torch.Tensor) -> torch.Tensor:
    """Flat indices ``(n,)`` into ``loss_weights`` ``(B, T)`` of the tokens with a nonzero weight,
    ascending. Computed while the batch is still on the host, where finding them costs no device
    synchronisation. The first token of a row never has a weight (nothing predicts it; the
    tokenizers guarantee weight 0 there), so every index has a predecessor in its row."""
    flat = loss_weights.reshape(-1)
    index = torch.nonzero(flat != 0).reshape(-1)
    if loss_weights.dim() != 2 or bool((index % loss_weights.shape[1] == 0).any()):
        raise ValueError("loss_weights must be (B, T) with weight 0 on the first token of every row (nothing predicts it)")
    return index


def collate_padded(
    examples: Sequence[TokenizedExample], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict:
    """One example per row, right-padded to the longest (rounded up to ``pad_to_multiple_of``).

    Returns the module-level dict with ``B = len(examples)``; ``position_ids`` of a row are
    ``0 .. T-1`` (continuing over its pads).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [check_example(example) for example in examples]
    width = padded_length(max(lengths), pad_to_multiple_of)
    return _batch(examples, [[n] for n in lengths], pad_token_id, width)


def collate_packed(rows: Sequence[PackedRow], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """One :class:`~posttrain.data.packing.PackedRow` per row, right-padded like
    :func:`collate_padded`.

    ``position_ids`` restart at 0 at every packed example; the pad tail continues the last
    example's positions (safe: it follows every real token, see the module docstring).
    """
    if not rows:
        raise ValueError("cannot collate an empty batch")
    for row in rows:
        if sum(row["seq_lengths"]) != len(row["input_ids"]):
            raise ValueError(
                f"packed row of source rows {row['rows']}: seq_lengths sum to {sum(row['seq_lengths'])} "
                f"but the row has {len(row['input_ids'])} tokens"
            )
        check_example(row)
    width = padded_length(max(len(row["input_ids"]) for row in rows), pad_to_multiple_of)
    return _batch(rows, [row["seq_lengths"] for row in rows], pad_token_id, width)


def collate_padding_free(
    examples: Sequence[TokenizedExample], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict:
    """The whole batch flattened into one row (``B = 1``) with position ids restarting per example:
    the same as packing every example of the batch into a single row. Pads appear only when
    ``pad_to_multiple_of`` rounds the length up."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    return collate_packed([make_packed_row(examples)], pad_token_id, pad_to_multiple_of)


def _flatten(items: Sequence) -> list[TokenizedExample]:
    """Examples from items that are examples or lists of examples (a data-loader item may hold one
    example or a packed bin's worth)."""
    examples: list[TokenizedExample] = []
    for item in items:
        if isinstance(item, Mapping):
            if "seq_lengths" in item:
                raise TypeError("a PackedRow can only be collated in 'packed' mode")
            examples.append(item)
        else:
            examples.extend(item)
    return examples


def _as_packed_row(item) -> PackedRow:
    if isinstance(item, Mapping):
        return item if "seq_lengths" in item else make_packed_row([item])
    return make_packed_row(list(item))


class Collator:
    """``collate_fn`` for a ``DataLoader``: picks the layout by ``mode``.

    - ``"padded"``: :func:`collate_padded`; items are examples (or one-element lists of them).
    - ``"packed"``: :func:`collate_packed`; items are :class:`PackedRow` dicts or lists of
      examples forming one packed row (a bin from ``best_fit_decreasing``).
    - ``"padding_free"``: :func:`collate_padding_free` over all examples of the batch.

    A plain object with plain attributes, so it pickles into data-loader worker processes.
    """

    def __init__(self, mode: str = "padded", *, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown collation mode {mode!r}; choose one of {MODES}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to the EOS token) before batching")
        padded_length(1, pad_to_multiple_of)  # validates it
        self.mode = mode
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence) -> dict:
        if self.mode == "packed":
            rows = [_as_packed_row(item) for item in items]
            return collate_packed(rows, self.pad_token_id, self.pad_to_multiple_of)
        examples = _flatten(items)
        if self.mode == "padded":
            return collate_padded(examples, self.pad_token_id, self.pad_to_multiple_of)
        return collate_padding_free(examples, self.pad_token_id, self.pad_to_multiple_of)

    def __repr__(self) -> str:
        return f"Collator({self.mode!r}, pad_token_id={self.pad_token_id}, pad_to_multiple_of={self.pad_to_multiple_of})"
