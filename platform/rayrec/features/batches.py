"""Model inputs from example rows: the one conversion used by training, evaluation and serving.

Histories arrive as variable-length lists (Parquet) or Python lists (the online feature store)
and leave as fixed-size arrays: right-aligned item ids, event types as stage + 1 (0 = padding),
log-scaled gap bucket ids, and the raw gaps in seconds for the ranker's recency features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayrec.features.transforms import gap_bucket, pad_lists

HISTORY_INPUTS = ("hist_items", "hist_types", "hist_gaps", "hist_gaps_s")


def history_inputs(hist_items: Any, hist_types: Any, hist_gaps_s: Any, length: int) -> dict[str, np.ndarray]:
    items = pad_lists(hist_items, length)
    present = items > 0
    types = np.where(present, pad_lists(hist_types, length) + 1, 0)
    gaps_s = pad_lists(hist_gaps_s, length, dtype=np.float32)
    return {
        "hist_items": items,
        "hist_types": types,
        "hist_gaps": np.where(present, gap_bucket(gaps_s), 0),
        "hist_gaps_s": np.where(present, gaps_s, 0).astype(np.float32),
    }


def example_inputs(batch: Any, length: int, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A batch of event/ranking/search rows (Arrow table) -> fixed-size numpy arrays."""
    out = history_inputs(batch.column("hist_items"), batch.column("hist_types"), batch.column("hist_gaps_s"), length)
    for name in ("item_idx", "user_idx", *extra):
        out[name] = batch.column(name).to_numpy().astype(np.int64)
    return out
