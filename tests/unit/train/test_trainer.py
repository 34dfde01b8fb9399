from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.train.trainer import fit_split_interactions


def test_the_interaction_matrix_counts_the_fit_splits_only(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    pq.write_table(pa.table({"user_idx": [2, 2, 2, 3, 3], "item_idx": [5, 5, 6, 5, 7],
                             "ts_ms": [10, 20, 30, 40, 50],
                             "split": pa.array([0, 0, 1, 0, 2], pa.int8())}), events / "part-0.parquet")
    trend, train = fit_split_interactions(events, 0, 4, 8, with_matrix=True)
    assert train.shape == (4, 8) and train[2, 5] == 2 and train[3, 5] == 1 and train.nnz == 2
    assert len(trend.keys) == 3  # the trend counts read the same rows
    trend, with_valid = fit_split_interactions(events, 1, 4, 8, with_matrix=True)
    assert with_valid[2, 6] == 1 and with_valid[3, 7] == 0 and len(trend.keys) == 4
    assert fit_split_interactions(events, 1, 4, 8, with_matrix=False)[1] is None
