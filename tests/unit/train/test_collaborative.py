from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from rayrec.models.collaborative import collaborative_scores, regularized_gram
from rayrec.train.collaborative import fit_item_factors, interaction_matrix

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


def test_the_interaction_matrix_counts_the_fit_splits_only(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    pq.write_table(pa.table({"user_idx": [2, 2, 2, 3, 3], "item_idx": [5, 5, 6, 5, 7],
                             "split": pa.array([0, 0, 1, 0, 2], pa.int8())}), events / "part-0.parquet")
    train = interaction_matrix(events, 0, 4, 8)
    assert train.shape == (4, 8) and train[2, 5] == 2 and train[3, 5] == 1 and train.nnz == 2
    with_valid = interaction_matrix(events, 1, 4, 8)
    assert with_valid[2, 6] == 1 and with_valid[3, 7] == 0
