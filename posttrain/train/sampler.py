"""The order in which rows are batched: reshuffled every epoch from (seed, epoch) alone.

Because the order depends on nothing but the seed and the epoch number, a resumed run rebuilds
exactly the same batches and only has to skip the ones it already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

# How many batches' worth of rows are sorted together when grouping by length: big enough to
# cut padding sharply, small enough to keep batches well mixed.
GROUP_SIZE_IN_BATCHES = 64


class EpochBatchSampler:
    """Yields lists of row indices, ``batch_size`` at a time.

    ``lengths``: token count per row, used when ``group_by_length`` (rows of similar length
    share a batch, so right-padding wastes little compute; the batch order is still random).
    ``shuffle=False`` keeps dataset order (evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = False,
        drop_last: bool = False,
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``. (Deliberately not called ``set_epoch``: accelerate's
        dataloader calls ``set_epoch`` with its own iteration counter, which restarts at 0 in a
        resumed run.)"""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = list(range(n))
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        if self.group_by_length:
            span = self.batch_size * GROUP_SIZE_IN_BATCHES
            order = [
                i
                for start in range(0, n, span)
                for i in sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.group_by_length:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7919)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches
