"""The item catalog as Serve sees it: ids both ways, display fields, and request filters as masks.

Read once per replica from a release's ``items.parquet``. A filter becomes a boolean mask over item
ids that the FAISS index honours exactly (``ItemIndex.search(allowed=...)``), so a filtered request
still gets its full ``k`` whenever that many items match.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rayrec.features.items import ItemFeatureTable
from rayrec.features.vocab import PAD_ID, UNK_ID

PURCHASE_STAGE = 3


@dataclass(frozen=True)
class ItemFilter:
    """What a request may restrict; all parts must hold. Category matches a path prefix at a level
    boundary ("Electronics" matches "Electronics > Phones > Cases"), case-insensitively."""

    category: str | None = None
    brand: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    @property
    def is_empty(self) -> bool:
        return self.category is None and self.brand is None and self.price_min is None and self.price_max is None


class ServingCatalog:
    def __init__(self, items_parquet: Path, n_items: int, title_tokens: int) -> None:
        table = pq.read_table(items_parquet)
        idx = table.column("item_idx").to_numpy().astype(np.int64)
        self.n_items = n_items
        self.features = ItemFeatureTable.from_parquet(items_parquet, n_items, title_tokens)

        def dense(column: str, fill: Any) -> np.ndarray:
            out = np.full(n_items, fill, dtype=object)
            out[idx] = table.column(column).to_pylist()
            return out

        self.item_id = dense("item_id", "")
        self.title = dense("title", None)
        self.category = dense("category", None)
        self.brand = dense("brand", None)
        self.price = self.features.price
        self.index_of: dict[str, int] = {str(v): int(i) for i, v in zip(idx, table.column("item_id").to_pylist())}
        self.recommendable = np.zeros(n_items, dtype=bool)
        self.recommendable[idx] = True
        self.recommendable[[PAD_ID, UNK_ID]] = False
        self._category_lower = np.array([(c or "").lower() for c in self.category], dtype=object)
        self._brand_lower = np.array([(b or "").lower() for b in self.brand], dtype=object)

    def ids_of(self, item_ids: list[str]) -> np.ndarray:
        """Item idx per id; UNK_ID for ids this release does not know (new items the model never saw)."""
        return np.fromiter((self.index_of.get(i, UNK_ID) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def describe(self, idx: int) -> dict[str, Any]:
        price = self.price[idx]
        return {"item_id": self.item_id[idx], "title": self.title[idx], "category": self.category[idx],
                "brand": self.brand[idx], "price": None if np.isnan(price) else float(price)}  # fmt: skip

    def allowed(self, item_filter: ItemFilter, exclude: np.ndarray | None = None) -> np.ndarray | None:
        """Mask of items a request may get; None when nothing is restricted (the index's fast path)."""
        if item_filter.is_empty and (exclude is None or len(exclude) == 0):
            return None
        mask = self._filter_mask(item_filter).copy()
        if exclude is not None and len(exclude):
            mask[exclude] = False
        return mask

    @lru_cache(maxsize=256)  # noqa: B019 - one catalog per replica, lives as long as the replica
    def _filter_mask(self, item_filter: ItemFilter) -> np.ndarray:
        mask = self.recommendable.copy()
        if item_filter.category is not None:
            wanted = item_filter.category.strip().lower()
            mask &= np.fromiter((c == wanted or c.startswith(wanted + " > ") for c in self._category_lower),
                                dtype=bool, count=self.n_items)
        if item_filter.brand is not None:
            mask &= self._brand_lower == item_filter.brand.strip().lower()
        with np.errstate(invalid="ignore"):  # unknown prices (NaN) never match a price bound
            if item_filter.price_min is not None:
                mask &= self.price >= item_filter.price_min
            if item_filter.price_max is not None:
                mask &= self.price <= item_filter.price_max
        return mask
