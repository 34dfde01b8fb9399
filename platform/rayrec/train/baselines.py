"""Non-neural baselines every model must beat, each a :class:`~rayrec.train.evaluate.Recommender`.

All of them fit on the interactions strictly before the split's cutoff (``EvalSplit.interactions``:
train for ``valid``, train+valid for ``test``), so popularity, co-occurrence and factors never see
the evaluated period. Where a system has nothing to say about a user (no prior interactions) or
about an item (equal scores), overall popularity decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp

from rayrec.train.evaluate import EvalSplit, NotRunnable, Recommender, rows_per_batch, topk_excluding


def user_batches(n: int, n_items: int) -> Iterator[slice]:
    """User slices whose dense ``[rows, n_items]`` score blocks stay bounded on large catalogs."""
    size = rows_per_batch(n_items, cap=2048)
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))


def prior_counts(split: EvalSplit) -> np.ndarray:
    """Interactions per item before the cutoff: the popularity a system may know at query time."""
    return np.asarray(split.interactions.sum(axis=0)).ravel().astype(np.float64)


def tiebreak(popularity: np.ndarray) -> np.ndarray:
    """Popularity squeezed into [0, 1e-6): added to a score, it orders only otherwise-equal items."""
    return 1e-6 * popularity / (popularity.max(initial=0.0) + 1.0)


def rank_by_item_weights(weights: np.ndarray | sp.spmatrix, popularity: np.ndarray, split: EvalSplit, k: int,
                         exclude_seen: bool) -> np.ndarray:
    """Top ``k`` per user of score(u) = u's prior items @ ``weights`` (item x item, sparse or dense),
    popularity ordering ties: the scoring of every item-to-item model (ItemKNN, EASE)."""
    out = np.empty((len(split.users), k), dtype=np.int64)
    seen = split.seen.astype(np.float32)
    tie = tiebreak(popularity)
    for rows in user_batches(len(split.users), split.n_items):
        product = seen[rows] @ weights
        scores = (product.toarray() if sp.issparse(product) else np.asarray(product)).astype(np.float64) + tie
        out[rows] = topk_excluding(scores, split.seen[rows], k, exclude_seen)
    return out


def _rank_global(scores: np.ndarray, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
    """Top-k of one score vector shared by all users, with each user's own seen items removed."""
    view = np.broadcast_to(scores, (len(split.users), scores.size))  # a view: no [U, n_items] copy
    return topk_excluding(view, split.seen, k, exclude_seen)


class MostPopular:
    """Items ranked by their interaction count before the cutoff (= train counts for ``valid``)."""

    name = "MostPopular"

    def __init__(self) -> None:
        self.scores: np.ndarray | None = None

    def fit(self, split: EvalSplit) -> None:
        self.scores = prior_counts(split)

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        assert self.scores is not None, "fit first"
        return _rank_global(self.scores, split, k, exclude_seen)


class RecentlyPopular:
    """Items ranked by their count in the last ``window_days`` before the cutoff; overall prior
    popularity orders ties, including the items nobody touched in the window."""

    name = "RecentlyPopular"

    def __init__(self, window_days: float = 7.0) -> None:
        self.window_days = float(window_days)
        self.scores: np.ndarray | None = None

    def fit(self, split: EvalSplit) -> None:
        counts = split.recent_counts(self.window_days)
        overall = prior_counts(split)
        # Window counts are integers, so overall/(max+1) < 1 can only reorder equal window counts.
        self.scores = counts + overall / (overall.max(initial=0.0) + 1.0)

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        assert self.scores is not None, "fit first"
        return _rank_global(self.scores, split, k, exclude_seen)


def cosine_neighbors(user_items: sp.csr_matrix, neighbors: int, block: int | None = None,
                     shrinkage: float = 0.0) -> sp.csr_matrix:
    """Item-item cosine similarity of the binary ``user_items`` columns, top ``neighbors`` per row.

    ``shrinkage`` is added to the denominator (``co / (|i| |j| + shrinkage)``), which pulls the
    similarity of items seen together by few users towards 0. Computed ``block`` items at a time
    (dense ``[block, n_items]``, by default ~16M values) so memory stays bounded; the diagonal is
    dropped so an item never recommends itself.
    """
    x = user_items.astype(bool).astype(np.float32).tocsc()
    n_items = x.shape[1]
    block = block or rows_per_batch(n_items, cap=1024)
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
    inv = np.divide(np.float32(1.0), norms, out=np.zeros_like(norms), where=norms > 0)
    shrink = np.float32(shrinkage)
    xt = x.T.tocsr()
    keep = min(neighbors, max(n_items - 1, 0))
    rows, cols, vals = [], [], []
    for lo in range(0, n_items, block):
        hi = min(lo + block, n_items)
        co = (xt[lo:hi] @ x).toarray()
        if shrink > 0:
            co /= norms[lo:hi, None] * norms[None, :] + shrink
        else:
            co *= inv[lo:hi, None] * inv[None, :]
        co[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        if keep == 0:
            continue
        top = np.argpartition(-co, keep - 1, axis=1)[:, :keep] if keep < n_items else (
            np.tile(np.arange(n_items), (hi - lo, 1)))
        sims = np.take_along_axis(co, top, axis=1)
        nz = sims > 0
        rows.append(np.repeat(np.arange(lo, hi), nz.sum(axis=1)))
        cols.append(top[nz])
        vals.append(sims[nz])
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_items, n_items), dtype=np.float32)


class ItemKNN:
    """Item-based CF: score(u, j) = sum over u's prior items i of cos(i, j), cosine on the binary
    user x item matrix before the cutoff (shrunk by ``shrinkage``), keeping each item's top
    ``neighbors``."""

    name = "ItemKNN"

    def __init__(self, neighbors: int = 100, shrinkage: float = 0.0) -> None:
        self.neighbors, self.shrinkage = int(neighbors), float(shrinkage)
        self.similarity: sp.csr_matrix | None = None
        self.popularity: np.ndarray | None = None

    def fit(self, split: EvalSplit) -> None:
        self.similarity = cosine_neighbors(split.interactions, self.neighbors, shrinkage=self.shrinkage)
        self.popularity = prior_counts(split)

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        assert self.similarity is not None and self.popularity is not None, "fit first"
        return rank_by_item_weights(self.similarity, self.popularity, split, k, exclude_seen)


class _ImplicitModel:
    """Shared fit/recommend around an ``implicit`` CPU model; users with no prior interactions
    (their rows are empty, so their factors are zero (ALS) or never-trained noise (BPR)) get
    MostPopular instead."""

    name = "implicit"

    def __init__(self) -> None:
        self.model: object | None = None
        self.fallback = MostPopular()

    def _make(self) -> object:
        raise NotImplementedError

    def fit(self, split: EvalSplit) -> None:
        self.fit_matrix(split.interactions)
        self.fallback.fit(split)

    def fit_matrix(self, interactions: sp.spmatrix) -> None:
        """Fits the model on a users x items matrix of interaction counts."""
        from threadpoolctl import threadpool_limits

        # implicit runs its own thread pool; a multi-threaded BLAS underneath oversubscribes the
        # cores (implicit warns at construction), so BLAS is held to one thread while it works.
        with threadpool_limits(limits=1, user_api="blas"):
            self.model = self._make()
            # A copy: implicit writes into its input's buffers, read-only when it came through Ray's object store.
            self.model.fit(sp.csr_matrix(interactions, copy=True), show_progress=False)  # type: ignore[attr-defined]

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        assert self.model is not None, "fit first"
        out = self.fallback.recommend(split, k, exclude_seen)
        known = np.flatnonzero(split.seen.getnnz(axis=1) > 0)
        if known.size == 0:
            return out
        with threadpool_limits(limits=1, user_api="blas"):
            ids, scores = self.model.recommend(  # type: ignore[attr-defined]
                split.users[known], split.seen[known].astype(np.float32).tocsr(), N=k,
                filter_already_liked_items=exclude_seen, filter_items=np.array([0, 1], dtype=np.int32),
            )
        # When fewer than k items are eligible (a small catalog), implicit pads with the lowest
        # float32 score and then with id 0 at score 0: neither is a recommendation.
        real = (ids >= 2) & (ids < split.n_items)
        ids = np.where(real & np.isfinite(scores) & (scores > np.finfo(np.float32).min), ids, -1)
        padded = np.full((known.size, k), -1, dtype=np.int64)
        padded[:, : ids.shape[1]] = ids
        out[known] = padded
        return out


class ImplicitALS(_ImplicitModel):
    """``implicit``'s ALS (Hu, Koren & Volinsky 2008), confidence ``1 + alpha * count``."""

    def __init__(self, factors: int = 64, iterations: int = 15, regularization: float = 0.05,
                 alpha: float = 1.0, random_state: int = 42, num_threads: int = 0) -> None:
        super().__init__()
        factors, iterations = int(factors), int(iterations)
        self.factors, self.iterations, self.regularization = factors, iterations, regularization
        self.alpha, self.random_state, self.num_threads = alpha, random_state, num_threads
        self.name = "ImplicitALS"

    def _make(self) -> object:
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.factors, iterations=self.iterations, regularization=self.regularization,
            alpha=self.alpha, random_state=self.random_state, num_threads=self.num_threads,
        )


class ImplicitBPR(_ImplicitModel):
    """``implicit``'s BPR-MF (Rendle et al. 2009); counts only mark positives. One thread by
    default because its multi-threaded SGD is Hogwild and not reproducible."""

    def __init__(self, factors: int = 64, iterations: int = 100, learning_rate: float = 0.05,
                 regularization: float = 0.01, random_state: int = 42, num_threads: int = 1) -> None:
        super().__init__()
        factors, iterations = int(factors), int(iterations)
        self.factors, self.iterations, self.learning_rate = factors, iterations, learning_rate
        self.regularization, self.random_state, self.num_threads = regularization, random_state, num_threads
        self.name = "ImplicitBPR"

    def _make(self) -> object:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=self.factors, iterations=self.iterations, learning_rate=self.learning_rate,
            regularization=self.regularization, random_state=self.random_state,
            num_threads=self.num_threads,
        )


class EASE:
    """EASE (Steck 2019): a closed-form item x item linear model, ``B = I - P / diag(P)`` with
    ``P = (X^T X + lambda I)^-1`` on the binary user x item matrix before the cutoff, and score(u) =
    x_u B (zero diagonal, so an item never recommends itself). Dense ``[n_items, n_items]``: refused
    with :class:`NotRunnable` when its matrices would exceed ``max_gb``."""

    name = "EASE"

    def __init__(self, l2: float = 500.0, max_gb: float = 4.0) -> None:
        self.l2, self.max_gb = float(l2), float(max_gb)
        self.weights: np.ndarray | None = None
        self.popularity: np.ndarray | None = None

    @staticmethod
    def needed_gb(n_items: int) -> float:
        """Peak memory of the fit: the Gram matrix, its inverse and B, float64."""
        return 3 * 8 * n_items**2 / 2**30

    def fit(self, split: EvalSplit) -> None:
        if self.needed_gb(split.n_items) > self.max_gb:
            raise NotRunnable(f"needs {self.needed_gb(split.n_items):.1f} GB for {split.n_items:,} items "
                              f"(limit {self.max_gb:g} GB)")
        x = split.interactions.astype(bool).astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        del gram
        weights = inverse / (-np.diag(inverse))
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32)
        self.popularity = prior_counts(split)

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        assert self.weights is not None and self.popularity is not None, "fit first"
        return rank_by_item_weights(self.weights, self.popularity, split, k, exclude_seen)


def _sasrec(**params: float) -> Recommender:
    from rayrec.train.sasrec import SASRecRecommender  # torch: imported only when asked for

    return SASRecRecommender(**params)  # type: ignore[arg-type]


# Config names (``evaluate.baselines``) -> constructors; keyword arguments are their hyperparameters
# (``evaluate.baseline_space`` searches them), and each constructor's defaults are the untuned values.
BASELINES: dict[str, Callable[..., Recommender]] = {
    "most_popular": MostPopular,
    "recently_popular": RecentlyPopular,
    "item_knn": ItemKNN,
    "implicit_als": ImplicitALS,
    "implicit_bpr": ImplicitBPR,
    "ease": EASE,
    "sasrec": _sasrec,
}
