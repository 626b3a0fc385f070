"""Best-fit-decreasing bin packing and packed-row construction."""

from __future__ import annotations

import random

import pytest

from posttrain.data.packing import (
    PackingStats,
    best_fit_decreasing,
    make_packed_row,
    pack_examples,
)


def _example(ids, weights, turns, row):
    return {"input_ids": list(ids), "loss_weights": list(weights), "turn_index": list(turns), "row": row}


def test_bfd_hand_worked_example():
    # capacity 8; items taken longest first: 0(5) 1(4) 2(3) 3(3) 4(2) 5(1)
    #   0 (5): no bin              -> open bin A [0],        A has 3 left
    #   1 (4): A has 3 < 4         -> open bin B [1],        B has 4 left
    #   2 (3): fits A(3), B(4); A is tighter -> A [0, 2],    A has 0 left
    #   3 (3): only B(4) fits      -> B [1, 3],              B has 1 left
    #   4 (2): A(0), B(1) too small -> open bin C [4],       C has 6 left
    #   5 (1): fits B(1), C(6); B is tighter -> B [1, 3, 5], B has 0 left
    assert best_fit_decreasing([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]


def test_bfd_is_best_fit_not_first_fit():
    # capacity 8: 0(6) -> A, 2 left; 1(4) -> B, 4 left; 2(3) -> only B fits, 1 left;
    # 3(1): fits A(2) and B(1). First fit would take A; best fit takes the tighter B.
    assert best_fit_decreasing([6, 4, 3, 1], 8) == [[0], [1, 2, 3]]


def test_bfd_ties_are_broken_by_index_and_lowest_bin():
    # capacity 7, lengths by index [2, 5, 2, 5]: order 1(5), 3(5), 0(2), 2(2) (equal lengths by index)
    #   1 -> A (2 left); 3 -> B (2 left); 0: A and B both have 2 left -> lowest bin A; 2 -> B
    assert best_fit_decreasing([2, 5, 2, 5], 7) == [[1, 0], [3, 2]]


def test_bfd_capacity_and_coverage_on_random_inputs():
    rng = random.Random(0)
    for _trial in range(50):
        capacity = rng.randint(1, 64)
        lengths = [rng.randint(0, capacity) for _ in range(rng.randint(0, 200))]
        bins = best_fit_decreasing(lengths, capacity)
        assert all(sum(lengths[i] for i in members) <= capacity for members in bins)
        assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
        assert all(members for members in bins)
        # determinism: the same input gives the same bins
        assert best_fit_decreasing(list(lengths), capacity) == bins


def test_bfd_never_leaves_two_bins_that_could_merge_below_half():
    # Best fit only opens a bin when no open bin has room, so at most one bin can be at most
    # half full: two such bins would have fitted each other's items.
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(2000)]
    bins = best_fit_decreasing(lengths, 128)
    at_most_half = [m for m in bins if sum(lengths[i] for i in m) <= 64]
    assert len(at_most_half) <= 1


def test_bfd_rejects_oversize_and_bad_capacity():
    with pytest.raises(ValueError, match="item 2 has length 9"):
        best_fit_decreasing([3, 8, 9], 8)
    with pytest.raises(ValueError, match="item 0 has length -1"):
        best_fit_decreasing([-1], 8)
    with pytest.raises(ValueError, match="capacity"):
        best_fit_decreasing([1], 0)


def test_bfd_empty_input():
    assert best_fit_decreasing([], 8) == []


def test_bfd_scales_to_many_items():
    # 1e5 items over a 4096-token capacity: a scan over all open bins would be ~1e9 steps; the
    # sorted-levels structure keeps this well under a second.
    rng = random.Random(2)
    lengths = [rng.randint(1, 4096) for _ in range(100_000)]
    bins = best_fit_decreasing(lengths, 4096)
    assert sum(len(m) for m in bins) == 100_000
    assert sum(lengths) / (len(bins) * 4096) > 0.95


def test_make_packed_row_concatenates_and_records_segments():
    a = _example([10, 11, 12], [0, 1, 1], [-1, 0, 0], row=4)
    b = _example([20, 21], [0, 0.5], [-1, 1], row=9)
    assert make_packed_row([a, b]) == {
        "input_ids": [10, 11, 12, 20, 21],
        "loss_weights": [0, 1, 1, 0, 0.5],
        "turn_index": [-1, 0, 0, -1, 1],
        "seq_lengths": [3, 2],
        "rows": [4, 9],
    }


def test_make_packed_row_rejects_weighted_first_token_and_ragged_lists():
    with pytest.raises(ValueError, match="row 7, field 'loss_weights': loss_weights\\[0\\] is 1"):
        make_packed_row([_example([1, 2], [1, 1], [0, 0], row=7)])
    with pytest.raises(ValueError, match="row 3, field 'turn_index'"):
        make_packed_row([_example([1, 2], [0, 1], [0], row=3)])


def test_pack_examples_and_stats():
    # lengths 5, 4, 3, 3, 2, 1 at capacity 8 -> bins [[0, 2], [1, 3, 5], [4]] (see the BFD test)
    examples = [
        _example(range(100 * k, 100 * k + n), [0] + [1] * (n - 1), [0] * n, row=k)
        for k, n in enumerate([5, 4, 3, 3, 2, 1])
    ]
    rows = pack_examples(examples, 8)
    assert [row["rows"] for row in rows] == [[0, 2], [1, 3, 5], [4]]
    assert [row["seq_lengths"] for row in rows] == [[5, 3], [4, 3, 1], [2]]
    assert rows[0]["input_ids"] == [0, 1, 2, 3, 4, 200, 201, 202]
    stats = PackingStats.from_rows(rows, 8)
    # 18 real tokens in 3 rows of 8 slots: 18 / 24 = 0.75
    assert (stats.rows_in, stats.rows_out, stats.real_tokens) == (6, 3, 18)
    assert stats.fill_ratio == pytest.approx(0.75)
    assert PackingStats.from_bins([5, 4, 3, 3, 2, 1], [[0, 2], [1, 3, 5], [4]], 8) == stats
    assert stats.describe() == "packed 6 examples into 3 rows of 8 tokens (fill 75.0%)"
