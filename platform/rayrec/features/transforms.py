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
