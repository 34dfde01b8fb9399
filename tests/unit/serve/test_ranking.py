"""Ranking payloads from several retrieval batches merge into one forward pass and split back."""

from __future__ import annotations

import numpy as np

from rayrec.serve.ranking import merge_payloads


def payload(rows: int, width: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"version": "v1", "user_vec": rng.normal(size=(rows, 4)).astype(np.float32),
            "hist_items": rng.integers(0, 9, (rows, 3)), "hist_gaps_s": rng.random((rows, 3), dtype=np.float32),
            "cand": rng.integers(2, 9, (rows, width)), "retrieval_score": rng.random((rows, width), dtype=np.float32)}


def test_merge_pads_candidates_and_keeps_row_order():
    a, b = payload(2, 5, 0), payload(3, 3, 1)
    merged, rows, widths = merge_payloads([a, b])
    assert rows == [2, 3] and widths == [5, 3]
    assert merged["cand"].shape == (5, 5) and merged["user_vec"].shape == (5, 4)
    assert (merged["cand"][2:, 3:] == -1).all() and (merged["retrieval_score"][2:, 3:] == 0).all()
    np.testing.assert_array_equal(merged["cand"][:2], a["cand"])
    np.testing.assert_array_equal(merged["cand"][2:, :3], b["cand"])
    np.testing.assert_array_equal(merged["hist_items"][2:], b["hist_items"])
