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
    """Variable-length history lists -> model inputs (see ``dense_history_inputs``)."""
    return dense_history_inputs(pad_lists(hist_items, length), pad_lists(hist_types, length),
                                pad_lists(hist_gaps_s, length, dtype=np.float32))


def without_history(hist_items: np.ndarray) -> np.ndarray:
    """bool ``[B]``: rows of ``hist_items`` ``[B, L]`` (0 = padding) with no item at all, the users the
    cold-start path answers."""
    return ~(np.asarray(hist_items) > 0).any(axis=1)


def dense_history_inputs(items: np.ndarray, stages: np.ndarray, gaps_s: np.ndarray) -> dict[str, np.ndarray]:
    """Right-aligned [B, L] item ids (0 = padding), funnel stages and gaps in seconds -> model inputs."""
    items = np.asarray(items, dtype=np.int64)
    present = items > 0
    gaps_s = np.asarray(gaps_s, dtype=np.float32)
    return {
        "hist_items": items,
        "hist_types": np.where(present, np.asarray(stages, dtype=np.int64) + 1, 0),
        "hist_gaps": np.where(present, gap_bucket(gaps_s), 0),
        "hist_gaps_s": np.where(present, gaps_s, 0).astype(np.float32),
    }


def example_inputs(batch: Any, length: int, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A batch of event/ranking/search rows (Arrow table) -> fixed-size numpy arrays."""
    out = history_inputs(batch.column("hist_items"), batch.column("hist_types"), batch.column("hist_gaps_s"), length)
    for name in ("item_idx", "user_idx", *extra):
        out[name] = batch.column(name).to_numpy().astype(np.int64)
    return out
