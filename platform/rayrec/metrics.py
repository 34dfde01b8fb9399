"""Full-ranking offline metrics: one pure, vectorised function over a whole top-K matrix.

Inputs are a ranked ``topk`` matrix of item ids ``[U, Kmax]`` (best first; ``-1`` pads a row that
has fewer than ``Kmax`` recommendations) and a sparse ``targets`` matrix ``[U, n_items]`` whose
non-zeros are the relevant items of each user. Nothing here knows about Ray, Parquet or models, so
training, tuning and benchmarks all score rankings the same way.

Definitions (``T_u`` = user u's relevant items, ``r_u(j)`` = item at rank j = 1..K, ``h_u(j)`` = 1
if ``r_u(j)`` is in ``T_u`` else 0; averages are over users with ``|T_u| > 0`` only — a user with
no targets has no defined recall and would silently drag every metric towards 0 or 1):

- ``recall@K   = mean_u  sum_{j<=K} h_u(j) / |T_u|``
- ``ndcg@K     = mean_u  DCG_u@K / IDCG_u@K`` with binary gains, ``DCG = sum_{j<=K} h_u(j) / log2(j+1)``
  and ``IDCG = sum_{j<=min(|T_u|, K)} 1 / log2(j+1)``
- ``hit@K      = mean_u  1[sum_{j<=K} h_u(j) > 0]``
- ``mrr        = mean_u  1 / (first j <= Kmax with h_u(j) = 1)``, 0 when there is no hit
- ``coverage@K = |distinct real items in any evaluated user's top K| / (n_items - first_real_id)``
- ``arp@K      = mean_u  mean_{real items i in u's top K} pct(i)``, where ``pct`` is the popularity
  percentile among real items: ``(rank(pop_i) - 1) / (n_real - 1)`` with average ranks for ties,
  so 0 = least and 1 = most popular. Users whose top K holds no real item are left out of arp.

Ids below ``first_real_id`` (0 = padding, 1 = unknown in rayrec vocabularies) and ``-1`` are never
hits and never count towards coverage or arp. A repeated id in a row counts once (its first rank).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

FIRST_REAL_ID = 2  # mirrors rayrec.features.vocab: 0 padding, 1 unknown (metrics sits below features)


def _as_binary_csr(matrix: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """A canonical copy (sorted, summed, explicit zeros dropped) so membership tests are exact."""
    out = sp.csr_matrix(matrix, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def first_occurrence(topk: np.ndarray) -> np.ndarray:
    """Boolean ``[U, K]``: True where an id appears in its row for the first time."""
    order = np.argsort(topk, axis=1, kind="stable")  # stable: the earliest rank comes first
    ranked = np.take_along_axis(topk, order, axis=1)
    repeat = np.zeros_like(topk, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    first = np.ones_like(topk, dtype=bool)
    np.put_along_axis(first, order, ~repeat, axis=1)
    return first


def membership(topk: np.ndarray, matrix: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Boolean ``[U, K]``: ``topk[u, j]`` is a non-zero of row u of ``matrix`` (ids < 0 never are).

    Vectorised by encoding (row, column) pairs as one int64 key and binary-searching the sorted keys
    of the sparse matrix, so it costs O(U*K log nnz) without densifying anything.
    """
    csr = _as_binary_csr(matrix)
    n_rows, n_cols = csr.shape
    topk = np.asarray(topk)
    if topk.shape[0] != n_rows:
        raise ValueError(f"topk has {topk.shape[0]} rows but the matrix has {n_rows}")
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(csr.indptr))
    keys = rows * n_cols + csr.indices.astype(np.int64)  # sorted: csr rows in order, indices sorted
    valid = (topk >= 0) & (topk < n_cols)
    query = np.arange(n_rows, dtype=np.int64)[:, None] * n_cols + np.where(valid, topk, 0)
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    found = keys[pos] == query if len(keys) else np.zeros(query.shape, dtype=bool)
    return found & valid


def popularity_percentile(popularity: np.ndarray, first_real_id: int = FIRST_REAL_ID) -> np.ndarray:
    """Per-item percentile in [0, 1] of ``popularity`` among real items (reserved ids get NaN)."""
    pop = np.asarray(popularity, dtype=np.float64)
    pct = np.full(pop.shape, np.nan)
    real = pop[first_real_id:]
    if real.size == 1:
        pct[first_real_id:] = 0.5  # one item: neither more nor less popular than the rest
    elif real.size > 1:
        pct[first_real_id:] = (rankdata(real, method="average") - 1.0) / (real.size - 1)
    return pct


def ranking_metrics(
    topk: np.ndarray,
    targets: sp.spmatrix | sp.sparray,
    ks: Sequence[int] = (10, 20, 50, 100),
    item_popularity: np.ndarray | None = None,
    first_real_id: int = FIRST_REAL_ID,
) -> dict[str, float]:
    """Recall/NDCG/hit/coverage/arp at each K in ``ks`` and MRR within Kmax; see the module docstring.

    ``arp@K`` is reported only when ``item_popularity`` (length ``n_items``) is given. The result also
    holds ``users``: how many users had at least one target and were therefore averaged over.
    """
    topk, keep, n_rel, real, hits = _judged(topk, targets, ks, first_real_id)
    n_items = targets.shape[1]
    pct = None if item_popularity is None else popularity_percentile(item_popularity, first_real_id)
    if pct is not None and pct.shape[0] != n_items:
        raise ValueError(f"item_popularity has {pct.shape[0]} entries, targets have {n_items} items")
    n_real_items = max(n_items - first_real_id, 1)

    out: dict[str, float] = {"users": float(keep.sum())}
    for k in ks:
        recall, ndcg = _recall_ndcg(hits, n_rel, k)
        out[f"recall@{k}"] = _mean(recall)
        out[f"ndcg@{k}"] = _mean(ndcg)
        out[f"hit@{k}"] = _mean((recall > 0).astype(np.float64))
        top = topk[:, :k][real[:, :k]]
        out[f"coverage@{k}"] = float(np.unique(top).size / n_real_items)
        if pct is not None:
            counted = real[:, :k]
            pct_sum = np.where(counted, pct[np.where(counted, topk[:, :k], first_real_id)], 0.0).sum(axis=1)
            n_counted = counted.sum(axis=1)
            out[f"arp@{k}"] = _mean(pct_sum[n_counted > 0] / n_counted[n_counted > 0])
    any_hit = hits.any(axis=1)
    first_rank = np.argmax(hits, axis=1) + 1
    out["mrr"] = _mean(np.where(any_hit, 1.0 / first_rank, 0.0))
    return out


def user_metrics(topk: np.ndarray, targets: sp.spmatrix | sp.sparray, k: int,
                 first_real_id: int = FIRST_REAL_ID) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k of each user with at least one target, in row order: the values
    ``ranking_metrics`` averages, for a standard error or a paired comparison of two rankings of the
    same users (``paired_ratio_interval``)."""
    _, _, n_rel, _, hits = _judged(topk, targets, (k,), first_real_id)
    recall, ndcg = _recall_ndcg(hits, n_rel, k)
    return {f"recall@{k}": recall, f"ndcg@{k}": ndcg}


def user_ndcg(topk: np.ndarray, targets: sp.spmatrix | sp.sparray, k: int,
              first_real_id: int = FIRST_REAL_ID) -> np.ndarray:
    """NDCG@k of each user with at least one target, in row order (see ``user_metrics``)."""
    return user_metrics(topk, targets, k, first_real_id)[f"ndcg@{k}"]


def paired_ratio_interval(ours: np.ndarray, theirs: np.ndarray, level: float = 0.9, resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(ours) / mean(theirs)`` over users, both arrays holding one
    value per user in the same order (resampled together: the comparison is paired). How far the ratio
    of two systems could move with another draw of test users of the same kind."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape or ours.ndim != 1 or ours.size == 0:
        raise ValueError(f"need two equal-length, non-empty per-user arrays, got {ours.shape} and {theirs.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ours.size, (resamples, ours.size))
    ratios = ours[idx].mean(axis=1) / np.maximum(theirs[idx].mean(axis=1), 1e-300)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def _discount(kmax: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, kmax + 2))  # rank j (1-based) -> 1/log2(j+1)


def _recall_ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per judged user: recall@k and NDCG@k (binary gains) from ``hits`` [U, >= k] and ``n_rel`` [U]."""
    discount = _discount(k)
    idcg = np.cumsum(discount)[np.minimum(n_rel, k).astype(np.int64) - 1]
    return hits[:, :k].sum(axis=1) / n_rel, (hits[:, :k] * discount).sum(axis=1) / idcg


def _judged(topk: np.ndarray, targets: sp.spmatrix | sp.sparray, ks: Sequence[int],
            first_real_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(topk, keep, n_rel, real, hits) restricted to the users with a target (``keep`` marks them)."""
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D [users, K], got shape {topk.shape}")
    kmax = topk.shape[1]
    if any(k < 1 or k > kmax for k in ks):
        raise ValueError(f"every K must be in 1..{kmax} (the width of topk), got {list(ks)}")
    csr = _as_binary_csr(targets)
    n_rel = np.diff(csr.indptr)
    keep = n_rel > 0
    topk, csr, n_rel = topk[keep], csr[keep], n_rel[keep].astype(np.float64)
    # Only the first occurrence of a real id counts, so duplicates cannot push recall above 1.
    real = (topk >= first_real_id) & (topk < csr.shape[1]) & first_occurrence(topk)
    return topk, keep, n_rel, real, membership(topk, csr) & real


def _mean(values: np.ndarray) -> float:
    """Mean that is 0.0 (not NaN with a warning) when no user qualifies."""
    return float(values.mean()) if values.size else 0.0
