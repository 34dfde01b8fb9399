"""Request filters as masks over item ids, and ids both ways."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.features.vocab import UNK_ID
from rayrec.serve.catalog import ItemFilter, ServingCatalog

ROWS = [  # item_idx, item_id, category, brand, price
    (2, "a", "Electronics > Phones > Cases", "Voltix", 10.0),
    (3, "b", "Electronics > Phones > Chargers", "Voltix", 25.0),
    (4, "c", "Electronics > Laptops > Bags", "Nimbus", 80.0),
    (5, "d", "Electronic Toys > Robots > Kits", "Nimbus", None),
    (6, "e", "Garden > Tools > Shears", "Greenly", 15.0),
]


@pytest.fixture()
def catalog(tmp_path):
    t = pa.table({
        "item_idx": pa.array([r[0] for r in ROWS], pa.int32()), "item_id": [r[1] for r in ROWS],
        "title": [f"title {r[1]}" for r in ROWS], "category": [r[2] for r in ROWS], "brand": [r[3] for r in ROWS],
        "cat1_idx": pa.array([1] * 5, pa.int32()), "cat2_idx": pa.array([1] * 5, pa.int32()),
        "cat3_idx": pa.array([1] * 5, pa.int32()), "brand_idx": pa.array([1] * 5, pa.int32()),
        "price": [r[4] for r in ROWS], "price_bucket": pa.array([1] * 5, pa.int16()),
        "title_tokens": pa.array([[1, 2]] * 5, pa.list_(pa.int32())), "train_interactions": [1] * 5,
    })  # fmt: skip
    pq.write_table(t, tmp_path / "items.parquet")
    return ServingCatalog(tmp_path / "items.parquet", n_items=7, title_tokens=4)


def ids(catalog, mask):
    return sorted(catalog.item_id[i] for i in np.flatnonzero(mask))


def test_no_filter_and_no_exclusion_is_the_fast_path(catalog):
    assert catalog.allowed(ItemFilter()) is None


def test_category_matches_whole_path_levels_case_insensitively(catalog):
    assert ids(catalog, catalog.allowed(ItemFilter(category="electronics"))) == ["a", "b", "c"]  # not "Electronic Toys"
    assert ids(catalog, catalog.allowed(ItemFilter(category="Electronics > Phones"))) == ["a", "b"]
    assert ids(catalog, catalog.allowed(ItemFilter(category="Electronics > Pho"))) == []


def test_brand_price_and_exclusions_combine(catalog):
    mask = catalog.allowed(ItemFilter(brand="voltix", price_min=20), exclude=np.array([2]))
    assert ids(catalog, mask) == ["b"]
    assert ids(catalog, catalog.allowed(ItemFilter(price_max=20))) == ["a", "e"]  # unknown price never matches
    assert ids(catalog, catalog.allowed(ItemFilter(), exclude=np.array([3, 4]))) == ["a", "d", "e"]


def test_reserved_ids_are_never_allowed_and_masks_are_not_shared(catalog):
    mask = catalog.allowed(ItemFilter(category="Garden"), exclude=np.array([6]))
    assert not mask.any()
    again = catalog.allowed(ItemFilter(category="Garden"))
    assert ids(catalog, again) == ["e"]  # the cached mask was not modified by the exclusion
    assert not catalog.allowed(ItemFilter(category="Garden"))[[0, 1]].any()


def test_ids_both_ways_and_display_fields(catalog):
    assert list(catalog.ids_of(["c", "zzz"])) == [4, UNK_ID]
    assert catalog.describe(5) == {"item_id": "d", "title": "title d", "category": "Electronic Toys > Robots > Kits",
                                   "brand": "Nimbus", "price": None}
