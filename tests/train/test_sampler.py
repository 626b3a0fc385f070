"""Batch order: a function of (seed, epoch) only, so resumed runs rebuild the same batches."""

from posttrain.train.sampler import EpochBatchSampler


def test_every_row_once_per_epoch_and_reshuffled():
    sampler = EpochBatchSampler(list(range(50)), 8, seed=3)
    first = sampler.batches()
    assert sorted(i for b in first for i in b) == list(range(50))
    assert [len(b) for b in first] == [8] * 6 + [2]
    sampler.start_epoch(1)
    assert sampler.batches() != first


def test_order_depends_only_on_seed_and_epoch():
    a = EpochBatchSampler([5] * 40, 4, seed=1)
    b = EpochBatchSampler([5] * 40, 4, seed=1)
    a.start_epoch(2)
    b.start_epoch(0)
    b.batches()
    b.start_epoch(2)
    assert a.batches() == b.batches()


def test_group_by_length_cuts_padding():
    lengths = [(i * 37) % 100 + 1 for i in range(512)]
    plain = EpochBatchSampler(lengths, 8, seed=0)
    grouped = EpochBatchSampler(lengths, 8, seed=0, group_by_length=True)

    def padded_tokens(sampler):
        return sum(max(lengths[i] for i in b) * len(b) for b in sampler.batches())

    assert sorted(i for b in grouped.batches() for i in b) == list(range(512))
    assert padded_tokens(grouped) < 0.7 * padded_tokens(plain)


def test_no_shuffle_keeps_order_and_drop_last():
    sampler = EpochBatchSampler([1] * 10, 4, shuffle=False, drop_last=True)
    assert sampler.batches() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(sampler) == 2
