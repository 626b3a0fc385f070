"""Sequence packing: several tokenized examples share one row of at most ``capacity`` tokens.

Packing trades padding for bookkeeping. :func:`best_fit_decreasing` decides *which* examples share
a row (a bin-packing heuristic); :func:`make_packed_row` concatenates them and records where each
example starts, so :mod:`posttrain.data.collate` can give every example position ids that restart
at 0. Those restarting position ids are what keeps examples apart inside the model (see the
collate module docstring); the loss weights keep them apart in the loss, because an example's
first token always has weight 0 (nothing inside the example predicts it, and the prediction from
the previous example's last token must never be trained).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from posttrain.data.errors import DataFormatError
from posttrain.data.example import TokenizedExample


class PackedRow(TypedDict):
    """Several examples concatenated into one row.

    ``input_ids`` / ``loss_weights`` / ``turn_index`` are the examples' lists joined end to end;
    ``seq_lengths[k]`` is the length of the k-th example and ``rows[k]`` its source row index.
    """

    input_ids: list[int]
    loss_weights: list[float]
    turn_index: list[int]
    seq_lengths: list[int]
    rows: list[int]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins whose total length is at most ``capacity``.

    Items are taken longest first (ties by index, so the result is deterministic) and each goes
    into the bin with the *least* remaining room that still fits it (ties: the lowest-numbered
    bin); when none fits, a new bin is opened. Bins are returned in the order they were opened,
    each listing its item indices in placement order.

    Runs in O(n log n): open bins are kept in a sorted list of distinct remaining capacities and,
    per remaining capacity, a min-heap of bin numbers, so finding the best bin is one bisection
    rather than a scan over all bins (1e6 items over 1e5 bins would otherwise take hours).

    Raises ``ValueError`` for a length above ``capacity`` or below 0: the data layer truncates
    examples to the packing capacity first, so an oversize item means a bug upstream.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    for index, length in enumerate(lengths):
        if not 0 <= length <= capacity:
            raise ValueError(
                f"item {index} has length {length}, which does not fit a packed row of capacity "
                f"{capacity}; examples must be truncated to the packing capacity before packing"
            )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    levels: list[int] = []  # sorted distinct remaining capacities of open bins
    bins_at: dict[int, list[int]] = {}  # remaining capacity -> min-heap of bin numbers

    for index in order:
        length = lengths[index]
        position = bisect.bisect_left(levels, length)
        if position == len(levels):
            bin_number, remaining = len(bins), capacity
            bins.append([])
        else:
            remaining = levels[position]
            heap = bins_at[remaining]
            bin_number = heapq.heappop(heap)
            if not heap:
                del bins_at[remaining]
                levels.pop(position)
        bins[bin_number].append(index)
        remaining -= length
        heap = bins_at.get(remaining)
        if heap is None:
            bins_at[remaining] = [bin_number]
            bisect.insort(levels, remaining)
        else:
            heapq.heappush(heap, bin_number)
    return bins


def make_packed_row(examples: Sequence[TokenizedExample]) -> PackedRow:
    """Concatenate ``examples`` (in the given order) into one :class:`PackedRow`.

    Checks what packing relies on and fails naming the row: the three per-token lists have one
    length, and the first token's loss weight is 0 (otherwise the loss would train the previous
    example's last token to predict this example's first token).
    """
    if not examples:
        raise ValueError("cannot make a packed row from no examples")
    row: PackedRow = {"input_ids": [], "loss_weights": [], "turn_index": [], "seq_lengths": [], "rows": []}
    for example in examples:
        length = check_example(example)
        if length and example["loss_weights"][0] != 0:
            raise DataFormatError(
                example.get("row"),
                "loss_weights",
                f"loss_weights[0] is {example['loss_weights'][0]}, but nothing predicts an example's "
                "first token; in a packed row that weight would train a prediction made from the "
                "previous example",
                "give the first token weight 0 (the tokenizers in posttrain.data always do)",
            )
        row["input_ids"].extend(example["input_ids"])
        row["loss_weights"].extend(example["loss_weights"])
        row["turn_index"].extend(example["turn_index"])
        row["seq_lengths"].append(length)
        row["rows"].append(example["row"])
    return row


def check_example(example: TokenizedExample) -> int:
    """Length of ``example`` after checking that its per-token lists agree; raises
    :class:`~posttrain.data.errors.DataFormatError` (a ``ValueError``) naming the row otherwise."""
    length = len(example["input_ids"])
    for field in ("loss_weights", "turn_index"):
        if len(example[field]) != length:
            raise DataFormatError(
                example.get("row"),
                field,
                f"{len(example[field])} entries but input_ids has {length}",
                "give every per-token list one entry per token",
            )
    return length


def pack_examples(examples: Sequence[TokenizedExample], capacity: int) -> list[PackedRow]:
    """Pack ``examples`` into rows of at most ``capacity`` tokens with :func:`best_fit_decreasing`.

    Every example appears in exactly one row; rows come in the order their bins were opened.
    """
    lengths = [check_example(example) for example in examples]
    bins = best_fit_decreasing(lengths, capacity)
    return [make_packed_row([examples[i] for i in members]) for members in bins]


@dataclass(frozen=True)
class PackingStats:
    """How well packing filled its rows.

    ``fill_ratio`` = real tokens / (packed rows * capacity): 1.0 means no padding at all.
    """

    rows_in: int
    rows_out: int
    real_tokens: int
    capacity: int

    @property
    def fill_ratio(self) -> float:
        slots = self.rows_out * self.capacity
        return self.real_tokens / slots if slots else 0.0

    @classmethod
    def from_bins(cls, lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> PackingStats:
        """Stats of the output of :func:`best_fit_decreasing` for ``lengths``."""
        rows_in = sum(len(members) for members in bins)
        real = sum(lengths[i] for members in bins for i in members)
        return cls(rows_in=rows_in, rows_out=len(bins), real_tokens=real, capacity=capacity)

    @classmethod
    def from_rows(cls, rows: Sequence[PackedRow], capacity: int) -> PackingStats:
        """Stats of the output of :func:`pack_examples`."""
        rows_in = sum(len(row["seq_lengths"]) for row in rows)
        real = sum(len(row["input_ids"]) for row in rows)
        return cls(rows_in=rows_in, rows_out=len(rows), real_tokens=real, capacity=capacity)

    def describe(self) -> str:
        """One line for the run report."""
        return (
            f"packed {self.rows_in} examples into {self.rows_out} rows of {self.capacity} tokens "
            f"(fill {self.fill_ratio:.1%})"
        )
