from __future__ import annotations

import numpy as np
import pytest

from rayrec.features.items import ItemFeatureTable

N_ITEMS = 30


@pytest.fixture
def items() -> ItemFeatureTable:
    rng = np.random.default_rng(0)
    cats = np.zeros((N_ITEMS, 3), dtype=np.int64)
    cats[2:, 0] = 2 + np.arange(N_ITEMS - 2) % 3
    cats[2:, 1] = 5 + np.arange(N_ITEMS - 2) % 6
    cats[2:, 2] = 11 + np.arange(N_ITEMS - 2) % 9
    title = np.zeros((N_ITEMS, 4), dtype=np.int64)
    title[2:, :2] = rng.integers(2, 40, size=(N_ITEMS - 2, 2))
    price = np.r_[np.nan, np.nan, rng.uniform(1, 100, N_ITEMS - 2)]
    brand = np.r_[0, 0, 2 + np.arange(N_ITEMS - 2) % 5]
    return ItemFeatureTable(categories=cats, brand=brand, price_bucket=np.r_[0, 0, 1 + np.arange(N_ITEMS - 2) % 4],
                            price=price, title=title, popularity=np.r_[0, 0, rng.integers(0, 50, N_ITEMS - 2)].astype(float))
