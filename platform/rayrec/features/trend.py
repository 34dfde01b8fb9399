"""Item trend: how many interactions an item got in the window before a moment ("selling this week").

The ranker's popularity feature counts the whole training period; a shop's demand moves faster
than that (seasons, promotions, the Christmas run-up), and on the real logs the strongest simple
baseline is "most interactions in the last 7 days". This module owns that count so training,
offline evaluation and serving read it the same way:

- training asks for the count of each candidate in the window strictly before each example's
  own timestamp (``ItemTrend.counts``), so the ranker never sees the future;
- evaluation and serving use one vector per item as of one moment (``ItemTrend.as_of``: the
  split's cutoff, or the end of the log a release was built from).

The ranker puts counts on the log scale of its popularity feature itself. The most-counted items
are also a second candidate source beside retrieval (``append_trending``): the ranker can only
promote what it is shown; and, so that it learns to order them, a source of training negatives
(``TrendingPools``: each day's trending list, as the candidates of a request that day would hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

DAY_MS = 86_400_000
_TS_BITS = 42  # ms timestamps below 2^42 (year 2109) leave 21 bits for item ids in one int64 key


@dataclass(frozen=True)
class ItemTrend:
    """Interactions as sorted ``(item << 42) + ts_ms`` keys: a window count is two searchsorteds.
    The window belongs to the model that reads the counts (``RankerSpec.trend_window_days``)."""

    keys: np.ndarray  # int64, ascending

    @classmethod
    def from_events(cls, item_idx: np.ndarray, ts_ms: np.ndarray) -> ItemTrend:
        ts = np.asarray(ts_ms, dtype=np.int64)
        if len(ts) and (ts.min() < 0 or ts.max() >= 1 << _TS_BITS):
            raise ValueError("ItemTrend: event timestamps must be epoch milliseconds between 1970 and 2109")
        keys = (np.asarray(item_idx, dtype=np.int64) << _TS_BITS) + ts
        return cls(keys=np.sort(keys))

    @classmethod
    def from_parquet(cls, events: Path, last_split: int | None = None) -> ItemTrend:
        """From preprocessing's ``events`` folder, optionally only splits up to ``last_split`` (0 = train)."""
        where = None if last_split is None else pads.field("split") <= last_split
        table = pads.dataset(events, format="parquet").to_table(columns=["item_idx", "ts_ms"], filter=where)
        return cls.from_events(table.column("item_idx").to_numpy(), table.column("ts_ms").to_numpy())

    @property
    def last_ms(self) -> int:
        """The latest interaction time (0 without any)."""
        return int((self.keys & ((1 << _TS_BITS) - 1)).max(initial=0))

    def counts(self, items: np.ndarray, at_ms: np.ndarray, window_days: float) -> np.ndarray:
        """Interactions with ``items`` in ``[at - window, at)``; ``at_ms`` broadcasts against ``items``
        (e.g. items ``[B, C]`` and times ``[B, 1]``)."""
        window_ms = int(round(window_days * DAY_MS))
        items = np.asarray(items, dtype=np.int64)
        at = np.broadcast_to(np.asarray(at_ms, dtype=np.int64), items.shape)
        base = items << _TS_BITS
        hi = np.searchsorted(self.keys, base + at, side="left")
        lo = np.searchsorted(self.keys, base + np.maximum(at - window_ms, 0), side="left")
        return (hi - lo).astype(np.float32)

    def as_of(self, at_ms: int, window_days: float, n_items: int) -> np.ndarray:
        """float32 ``[n_items]``: every item's count in the window before ``at_ms``."""
        return self.counts(np.arange(n_items), np.int64(at_ms), window_days)


def trending_order(counts: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Item ids with a positive count, most counted first (ties: lower id first), optionally only
    ``eligible`` ones (a bool mask)."""
    ok = counts > 0 if eligible is None else (counts > 0) & eligible
    ids = np.flatnonzero(ok)
    return ids[np.argsort(-counts[ids], kind="stable")]


@dataclass(frozen=True)
class TrendingPools:
    """The ``size`` most-counted items as of the start of every UTC day the log spans (row ``d`` is
    day ``first_day + d``), 0-padded where fewer items had any interaction in the window."""

    first_day: int  # days since the epoch of row 0
    ids: np.ndarray  # int64 [days, size], trending order, 0 = no item

    @classmethod
    def daily(cls, trend: ItemTrend, window_days: float, size: int, n_items: int) -> TrendingPools:
        ts = trend.keys & ((1 << _TS_BITS) - 1)
        first, last = (int(ts.min()) // DAY_MS, int(ts.max()) // DAY_MS) if len(ts) else (0, 0)
        ids = np.zeros((last - first + 1, size), dtype=np.int64)
        for row, day in enumerate(range(first, last + 1)):
            top = trending_order(trend.as_of(day * DAY_MS, window_days, n_items))[:size]
            ids[row, :len(top)] = top
        return cls(first_day=first, ids=ids)

    def of(self, ts_ms: np.ndarray) -> np.ndarray:
        """int64 ``[len(ts_ms), size]``: the pool of each timestamp's day (clipped to the log's days)."""
        rows = np.clip(np.asarray(ts_ms, dtype=np.int64) // DAY_MS - self.first_day, 0, len(self.ids) - 1)
        return self.ids[rows]


def append_trending(cand: np.ndarray, trending: np.ndarray, n: int,
                    allowed: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """``cand`` [B, C] (-1 pads) with ``n`` more columns: per row the first ``trending`` ids that
    ``allowed(row, ids)`` (a bool mask over ``ids``) lets the row have and it does not hold yet."""
    out = np.full((len(cand), n), -1, dtype=np.int64)
    if n == 0 or len(trending) == 0:
        return np.concatenate([cand, out], axis=1)
    head = trending[: 4 * (n + cand.shape[1])]  # usually enough; the full list only when filters bite
    for row in range(len(cand)):
        for pool in (head, trending):
            picks = pool[allowed(row, pool) & ~np.isin(pool, cand[row])][:n]
            if len(picks) == n or pool is trending:
                break
        out[row, :len(picks)] = picks
    return np.concatenate([cand, out], axis=1)


def trending_first(cand: np.ndarray, trending: np.ndarray,
                   allowed: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """The cold-start order: per row of ``cand`` [B, C] (-1 pads), the ``trending`` ids that
    ``allowed(row, ids)`` lets the row have, most counted first, then the row's own ids not among
    them (when too few items trend), cut to C columns."""
    width = cand.shape[1]
    head = append_trending(cand[:, :0], trending, width, allowed)
    out = np.full(cand.shape, -1, dtype=np.int64)
    for row in range(len(cand)):
        first = head[row][head[row] >= 0]
        own = cand[row][(cand[row] >= 0) & ~np.isin(cand[row], first)]
        merged = np.concatenate([first, own])[:width]
        out[row, :len(merged)] = merged
    return out
