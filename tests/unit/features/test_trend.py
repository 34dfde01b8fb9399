from __future__ import annotations

import numpy as np
import pytest

from rayrec.features.trend import (
    DAY_MS,
    ItemTrend,
    TrendingPools,
    append_trending,
    trending_first,
    trending_order,
)

T0 = 1_600_000_000_000


def _trend() -> ItemTrend:
    # item 2: 1 day and 3 days before T0 and once at T0 itself; item 3: 10 days before; item 4: after T0
    items = np.array([2, 2, 2, 3, 4])
    ts = np.array([T0 - DAY_MS, T0 - 3 * DAY_MS, T0, T0 - 10 * DAY_MS, T0 + DAY_MS])
    return ItemTrend.from_events(items, ts)


def test_counts_only_the_window_strictly_before_the_moment():
    trend = _trend()
    assert trend.counts(np.array([2, 3, 4, 5]), T0, 7).tolist() == [2, 0, 0, 0]  # T0's own event is not "before"
    assert trend.counts(np.array([2, 3]), T0, 14).tolist() == [2, 1]
    assert trend.counts(np.array([2, 4]), T0 + 2 * DAY_MS, 2).tolist() == [1, 1]


def test_counts_broadcast_one_time_per_row_against_its_candidates():
    trend = _trend()
    out = trend.counts(np.array([[2, 3], [2, 4]]), np.array([[T0], [T0 + 2 * DAY_MS]]), 7)
    assert out.tolist() == [[2, 0], [3, 1]]


def test_as_of_is_one_vector_over_the_catalog():
    trend = _trend()
    assert trend.as_of(T0 + 1, 7, n_items=6).tolist() == [0, 0, 3, 0, 0, 0]
    assert trend.last_ms == T0 + DAY_MS


def test_timestamps_outside_epoch_milliseconds_are_refused():
    with pytest.raises(ValueError, match="epoch milliseconds"):
        ItemTrend.from_events(np.array([2]), np.array([1 << 43]))


def test_trending_order_lists_counted_items_most_first():
    counts = np.array([0, 0, 5, 0, 9, 5], dtype=np.float32)
    assert trending_order(counts).tolist() == [4, 2, 5]
    assert trending_order(counts, eligible=np.array([1, 1, 1, 1, 0, 1], bool)).tolist() == [2, 5]


def test_append_trending_adds_only_allowed_items_a_row_does_not_hold():
    cand = np.array([[4, 7, -1], [1, 2, 3]])
    trending = np.array([7, 5, 9, 4, 8, 6])
    blocked = {0: {9}, 1: {5, 9, 4, 8, 6}}
    out = append_trending(cand, trending, 2, lambda row, ids: ~np.isin(ids, list(blocked[row])))
    assert out.tolist() == [[4, 7, -1, 5, 8], [1, 2, 3, 7, -1]]  # row 1 runs out of allowed items


def test_trending_first_puts_allowed_trending_items_first_and_fills_with_the_rows_own():
    cand = np.array([[3, 7, 1, -1], [2, 5, -1, -1]])
    trending = np.array([7, 5, 9])
    blocked = {0: {9}, 1: {5, 9}}
    out = trending_first(cand, trending, lambda row, ids: ~np.isin(ids, list(blocked[row])))
    assert out.tolist() == [[7, 5, 3, 1], [7, 2, 5, -1]]


def test_trending_pools_hold_each_days_most_counted_items_as_of_its_start():
    day = T0 // DAY_MS
    # day 0: item 3 twice, item 2 once; day 1: item 2 three times
    items = np.array([3, 3, 2, 2, 2, 2])
    ts = np.array([0, 1, 2, DAY_MS, DAY_MS + 1, DAY_MS + 2]) + day * DAY_MS
    pools = TrendingPools.daily(ItemTrend.from_events(items, ts), window_days=1, size=2, n_items=5)
    assert pools.first_day == day
    # as of day 0's start nothing has happened; as of day 1's, day 0's counts rank item 3 first
    assert pools.ids.tolist() == [[0, 0], [3, 2]]
    at = np.array([day * DAY_MS + 5, (day + 1) * DAY_MS, (day + 9) * DAY_MS, 0])
    assert pools.of(at).tolist() == [[0, 0], [3, 2], [3, 2], [0, 0]]  # outside the log: its first/last day
