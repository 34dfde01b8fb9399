"""Pure feature transforms used the same way by preprocessing, training and serving.

Keeping text tokenisation, category paths, price buckets and history windows here is what makes
an online request produce exactly the features a model was trained on.
"""

from __future__ import annotations

import re

import numpy as np

from rayrec.schema import CATEGORY_SEPARATOR

_TOKEN = re.compile(r"[0-9a-z]+")
CATEGORY_LEVELS = 3


def tokenize(text: str | None) -> list[str]:
    """Lower-cased alphanumeric words; the tokeniser of titles and search queries alike."""
    return _TOKEN.findall(text.lower()) if text else []


def category_prefixes(path: str | None, levels: int = CATEGORY_LEVELS) -> list[str]:
    """'A > B > C' -> ['A', 'A > B', 'A > B > C'], padded with '' to ``levels`` entries.

    Prefixes (not bare level names) are the vocabulary, so 'Kitchen' under two parents stays two
    categories.
    """
    parts = [p.strip() for p in (path or "").split(CATEGORY_SEPARATOR) if p.strip()][:levels]
    prefixes = [" > ".join(parts[: i + 1]) for i in range(len(parts))]
    return prefixes + [""] * (levels - len(prefixes))


def price_bucket_edges(prices: np.ndarray, buckets: int) -> np.ndarray:
    """Inner quantile edges of the known prices (``buckets - 1`` of them, strictly increasing)."""
    known = prices[np.isfinite(prices)]
    if known.size == 0:
        return np.array([], dtype=np.float64)
    edges = np.quantile(known, np.linspace(0, 1, buckets + 1)[1:-1])
    return np.unique(edges)


def price_bucket(prices: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bucket ids 1..len(edges)+1 for known prices and 0 for unknown (NaN) ones."""
    ids = np.searchsorted(edges, prices, side="right") + 1
    return np.where(np.isfinite(prices), ids, 0).astype(np.int16)


def history_window(
    user_starts: np.ndarray, positions: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the last ``length`` earlier rows of the same user, for rows sorted by user and time.

    Returns (index matrix [n, length], validity mask); oldest first, right-aligned so the most
    recent event is always in the last column.
    """
    offsets = np.arange(-length, 0)
    idx = positions[:, None] + offsets[None, :]
    valid = idx >= user_starts[:, None]
    return np.where(valid, idx, 0), valid


GAP_BUCKETS = 24  # log2 buckets of seconds: 0 = padding, 1 = same second, ... up to ~97 days


def gap_bucket(gaps_s: np.ndarray) -> np.ndarray:
    """Time gaps in seconds -> ids 1..GAP_BUCKETS-1 on a log2 scale (0 stays padding for the caller)."""
    buckets = np.floor(np.log2(np.maximum(gaps_s, 0) + 1)).astype(np.int64) + 1
    return np.minimum(buckets, GAP_BUCKETS - 1)


def pad_lists(lists: object, length: int, align: str = "right", dtype: type = np.int64) -> np.ndarray:
    """Variable-length lists (Python lists or an Arrow list array) -> [n, length], 0-padded.

    'right' keeps the most recent (last) values right-aligned, as histories are read; 'left'
    keeps the first values, as titles are.
    """
    import pyarrow as pa

    arr = lists if isinstance(lists, (pa.Array, pa.ChunkedArray)) else pa.array(lists, pa.list_(pa.float64()))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    arr = arr.fill_null([])
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False)
    starts, ends = offsets[:-1], offsets[1:]
    steps = np.arange(length)
    idx = (ends[:, None] - length + steps) if align == "right" else (starts[:, None] + steps)
    valid = (idx >= starts[:, None]) & (idx < ends[:, None])
    if values.size == 0:
        return np.zeros((len(starts), length), dtype=dtype)
    return np.where(valid, values[np.clip(idx, 0, values.size - 1)], 0).astype(dtype)
