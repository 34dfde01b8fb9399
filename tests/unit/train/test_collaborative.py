from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from rayrec.models.collaborative import collaborative_scores, regularized_gram
from rayrec.train.collaborative import fit_item_factors

N_ITEMS = 30


def test_fitted_factors_are_seeded_and_score_co_consumed_items_higher():
    # Two groups of users, each buying within its own half of the catalog.
    half = N_ITEMS // 2
    rows, cols = [], []
    for u in range(40):
        lo = 2 if u % 2 == 0 else half
        rows += [u] * 6
        cols += list(range(lo, lo + 6))
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(40, N_ITEMS))
    a, b = fit_item_factors(m, 8, seed=3), fit_item_factors(m, 8, seed=3)
    assert a.shape == (N_ITEMS, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    y = torch.from_numpy(a)
    scores = collaborative_scores(y, regularized_gram(y), torch.tensor([[2, 3, 4]]), torch.tensor([[5, half + 5]]))
    assert scores[0, 0] > scores[0, 1] + 0.1
