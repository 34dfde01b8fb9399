"""The item feature table as dense arrays, indexed by item id: what item towers and the ranker read.

Built from ``items.parquet`` (written by preprocessing); row ``i`` holds item id ``i``, and rows 0
(padding) and 1 (unknown) are all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rayrec.features.transforms import pad_lists


@dataclass(frozen=True)
class ItemFeatureTable:
    categories: np.ndarray  # [n_items, 3] category-prefix ids
    brand: np.ndarray  # [n_items]
    price_bucket: np.ndarray  # [n_items]
    price: np.ndarray  # [n_items] float, NaN when unknown
    title: np.ndarray  # [n_items, T] token ids, 0-padded at the end
    popularity: np.ndarray  # [n_items] training interactions

    @property
    def n_items(self) -> int:
        return len(self.brand)

    @classmethod
    def from_parquet(cls, path: Path, n_items: int, title_tokens: int) -> ItemFeatureTable:
        t = pq.read_table(path)
        idx = t.column("item_idx").to_numpy()

        def dense(column: str, dtype: type, fill: float = 0) -> np.ndarray:
            out = np.full(n_items, fill, dtype=dtype)
            out[idx] = t.column(column).to_numpy(zero_copy_only=False)
            return out

        cats = np.zeros((n_items, 3), dtype=np.int64)
        for level in range(3):
            cats[idx, level] = t.column(f"cat{level + 1}_idx").to_numpy()
        title = np.zeros((n_items, title_tokens), dtype=np.int64)
        title[idx] = pad_lists(t.column("title_tokens").to_pylist(), title_tokens, align="left")
        return cls(categories=cats, brand=dense("brand_idx", np.int64), price_bucket=dense("price_bucket", np.int64),
                   price=dense("price", np.float64, np.nan), title=title,
                   popularity=dense("train_interactions", np.float64))
