"""Tests of mmer_rt.batching: length buckets under an item and padded-seconds budget, every item exactly once."""

import numpy as np
import pytest

from mmer_rt.batching import BatchBudget, plan_batches

RATE = 16_000


def padded_samples(batch, lengths):
    return len(batch) * max(lengths[i] for i in batch)


def test_every_item_lands_in_exactly_one_batch():
    lengths = np.random.default_rng(0).integers(100, 50_000, size=97).tolist()
    batches = plan_batches(lengths, BatchBudget(max_items=8, max_seconds=5.0), RATE)
    assert sorted(i for batch in batches for i in batch) == list(range(97))


def test_item_budget_is_respected():
    batches = plan_batches([RATE] * 10, BatchBudget(max_items=4, max_seconds=None), RATE)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_padded_seconds_budget_is_respected():
    lengths = np.random.default_rng(1).integers(RATE // 10, 3 * RATE, size=60).tolist()
    budget = BatchBudget(max_items=100, max_seconds=6.0)
    for batch in plan_batches(lengths, budget, RATE):
        assert padded_samples(batch, lengths) <= 6 * RATE


def test_clip_longer_than_the_budget_runs_alone():
    batches = plan_batches([10 * RATE, RATE, RATE], BatchBudget(max_items=8, max_seconds=4.0), RATE)
    assert batches == [[0], [1, 2]]


def test_batches_group_similar_lengths_longest_first():
    lengths = [100, 90_000, 200, 80_000, 150, 85_000]
    batches = plan_batches(lengths, BatchBudget(max_items=3, max_seconds=None), RATE)
    assert batches == [[1, 5, 3], [2, 4, 0]]


def test_equal_lengths_keep_input_order_within_a_batch():
    assert plan_batches([5, 5, 5], BatchBudget(max_items=8), RATE) == [[0, 1, 2]]


def test_no_items_no_batches():
    assert plan_batches([], BatchBudget(), RATE) == []


@pytest.mark.parametrize("items, seconds", [(0, 1.0), (-1, 1.0), (2.5, 1.0), (True, 1.0), (4, 0.0), (4, -3.0)])
def test_bad_budgets_are_refused(items, seconds):
    with pytest.raises(ValueError, match="must be"):
        BatchBudget(max_items=items, max_seconds=seconds)
