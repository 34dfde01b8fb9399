from __future__ import annotations

import numpy as np

from rayrec.features.transforms import category_prefixes, history_window, price_bucket, price_bucket_edges, tokenize


def test_tokenize_lowercases_and_splits_on_punctuation():
    assert tokenize("Acme Chef-Knife, 8in!") == ["acme", "chef", "knife", "8in"]
    assert tokenize(None) == [] and tokenize("") == []


def test_category_prefixes_keep_parents_apart():
    assert category_prefixes("Home > Kitchen > Knives") == ["Home", "Home > Kitchen", "Home > Kitchen > Knives"]
    assert category_prefixes("Garden>Kitchen") == ["Garden", "Garden > Kitchen", ""]
    assert category_prefixes(None) == ["", "", ""]


def test_price_buckets_are_quantiles_and_unknown_is_zero():
    prices = np.arange(1, 101, dtype=float)
    edges = price_bucket_edges(prices, 4)
    np.testing.assert_allclose(edges, [25.75, 50.5, 75.25])
    np.testing.assert_array_equal(price_bucket(np.array([1.0, 50.0, 51.0, 1000.0, np.nan]), edges), [1, 2, 3, 4, 0])


def test_history_window_stays_within_user_and_is_right_aligned():
    # rows 0-2 user A, rows 3-4 user B
    starts = np.array([0, 0, 0, 3, 3])
    idx, valid = history_window(starts, np.arange(5), 2)
    assert valid.tolist() == [[False, False], [False, True], [True, True], [False, False], [False, True]]
    assert idx[2].tolist() == [0, 1] and idx[4, 1] == 3
