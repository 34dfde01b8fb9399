"""The ranker's collaborative item factors: ``implicit``'s ALS fitted on the interactions the models
learn from (train, or train + valid with ``train.include_valid``), with the regularisation the ranker's
fold-in uses (``models.collaborative``). The ALS settings are the peer baseline's (``ImplicitALS``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rayrec.models.collaborative import REGULARIZATION
from rayrec.train.baselines import ImplicitALS


def fit_item_factors(interactions: sp.csr_matrix, factors: int, seed: int = 42) -> np.ndarray:
    """float32 ``[n_items, factors]`` ALS item factors (deterministic for a seed: every Ray Train worker
    that fits them gets the same table). Items nobody interacted with keep ALS's small random start."""
    als = ImplicitALS(factors=factors, regularization=REGULARIZATION, random_state=seed)
    als.fit_matrix(interactions)
    return np.asarray(als.model.item_factors, dtype=np.float32)  # type: ignore[attr-defined]
