"""The FAISS item index: which index a catalog gets, how it is tuned, filtered search, and its files.

Owns building an inner-product index over item embeddings (row ``i`` = item id ``i``; rows 0 and 1,
padding and unknown, are never indexed), measuring it against exact search, searching it with
per-query item filters, and the on-disk pair ``index.faiss`` + ``manifest.json`` that serving loads.

Choice under ``index.kind: auto`` (catalog size = indexed items, ids >= 2):

- up to ``flat_max_items``: ``flat``, exact search; nothing to tune, nothing to lose.
- from ``pq_min_items``: ``ivf_pq``, because raw vectors no longer fit comfortably in memory.
- in between: ``ivf_flat`` first. It builds in seconds per million items (k-means on a sample, one
  assignment pass), while HNSW with ``ef_construction=200`` needs minutes per million on two cores;
  its recall rises monotonically with nprobe; and the large over-fetch that filtered search needs
  costs IVF little (it scans the same lists), whereas HNSW must widen efSearch to it. IVF only loses
  when the embeddings do not cluster: when reaching ``min_recall`` needs more than an eighth of the
  lists (or is not reached at all), HNSW is built and tuned too and the one with more measured
  queries/s at the target recall ships.
- an ANN index that ends up slower than exact search is never shipped: ``flat`` replaces it.

Tuning doubles nprobe (up to nlist) or efSearch (up to ``EF_SEARCH_CAP``) from the configured value
until recall@``recall_k`` against exact search reaches ``min_recall``, or until a doubling gains less
than ``PLATEAU_GAIN`` (PQ's quantization error caps recall below 1). The manifest records what was
reached, so a target missed at the cap is visible rather than silent. Explicit kinds are measured
but keep their configured parameters.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rayrec.artifacts import ArtifactError
from rayrec.files import file_sha256, fsync_path
from rayrec.config import ConfigError, IndexConfig

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
RESERVED_IDS = 2  # item ids 0 (padding) and 1 (unknown) have rows in the embedding matrix but no vector here
MIN_POINTS_PER_LIST = 39  # FAISS's own floor for k-means: fewer training points per centroid give poor lists
EF_SEARCH_CAP = 2048
PLATEAU_GAIN = 0.001
IVF_PRUNING_LIMIT = 8  # auto tries HNSW when IVF needs more than nlist / 8 lists for the target recall
QUERY_NOISE = 0.25  # norm of the noise added to sampled item vectors when no real user vectors are given
PQ_NBITS = 8

Progress = Callable[[str], None]


@dataclass(frozen=True)
class IndexManifest:
    """What was built and how well it searches; written as ``manifest.json`` beside ``index.faiss``."""

    kind: str  # chosen kind: flat | ivf_flat | hnsw | ivf_pq
    requested: str  # index.kind as configured (auto or explicit)
    dim: int
    n_items: int  # rows of the embedding matrix, reserved ids 0 and 1 included
    n_indexed: int  # vectors in the index (ids >= 2)
    vocab_fingerprint: str
    params: dict[str, Any]  # nlist / nprobe / M / ef_construction / ef_search / pq_m actually used
    recall_at_k: float  # against exact search on the measurement queries
    recall_k: int
    qps: float  # batched queries/s of this index with the configured threads
    exact_qps: float  # batched queries/s of exact inner-product search on the same queries
    build_s: float  # training + adding of the shipped index (measurement and tuning excluded)
    index_sha256: str  # of index.faiss; empty until the index is saved
    tuning: list[dict[str, Any]] = field(default_factory=list)  # every measured setting, in order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> IndexManifest:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name != "tuning"}
        missing = sorted(required - data.keys())
        if missing:
            raise ArtifactError(f"{source}: manifest lacks {', '.join(missing)}; not a rayrec index manifest")
        return cls(**{k: v for k, v in data.items() if k in known})


class ItemIndex:
    """A built or loaded FAISS index over item ids >= 2, searched with optional per-query filters.

    Filtered rows are answered, cheapest first, by (1) exact scoring of the allowed items when they
    are few (``exact_subset_max``: a gather and a small matrix product beat any ANN call), else (2)
    one batched ANN search over-fetching about ``2·k / allowed share`` results, growing fourfold for
    rows it leaves short (a filter that excludes the query's neighbourhood), and (3) exact scoring of
    the allowed items once the over-fetch would pass ``max_fetch``. Over-fetching keeps many queries
    with different filters in one FAISS call and behaves the same for every index kind; FAISS's
    ID selectors take one filter per call and, on IVF and HNSW, return short rows for selective
    filters, which the contract forbids. (3) makes "k real ids whenever k are allowed" hold always.
    On IVF an over-fetch can only return what its nprobe lists hold (about nprobe/nlist of the
    catalog), so filters allowing a smaller share than about k over that many items end in (3);
    on ``ivf_pq`` exact scoring uses the decoded codes, as approximate as the index itself.
    """

    exact_subset_max = 16_384
    max_fetch = 4_096

    def __init__(self, index: faiss.Index, manifest: IndexManifest, threads: int = 1) -> None:
        self._index = index
        self.manifest = manifest
        self.threads = threads
        self._flat_view = _flat_storage(index)
        if _is_ivf(index) and faiss.extract_index_ivf(index).direct_map.type == faiss.DirectMap.NoMap:
            # exact scoring of allowed items reconstructs vectors by id; 8 bytes per vector
            faiss.extract_index_ivf(index).make_direct_map()

    # ---- search -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int,
               allowed: list[np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k] float32, item ids [B, k] int64), best first, for L2-normalised queries [B, d].

        ``allowed[i]``: optional bool mask over item ids ``[n_items]`` for query ``i``. A row holds k
        real ids whenever at least k items are allowed; it is padded with id -1 and score -inf only
        when fewer are. Ids 0 and 1 are never returned.
        """
        q = self._check_queries(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        masks = self._check_masks(allowed, len(q))
        faiss.omp_set_num_threads(self.threads)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        exact_rows: list[int] = []
        free = [i for i, m in enumerate(masks) if m is None]
        if free:
            exact_rows += self._search_free(q, free, k, scores, labels)
        exact_rows += self._search_filtered(q, masks, k, scores, labels)
        for row in exact_rows:
            scores[row], labels[row] = self._exact(q[row], masks[row], k)
        ids = np.where(labels >= 0, labels + RESERVED_IDS, -1)
        return scores, ids

    def _search_free(self, q: np.ndarray, rows: list[int], k: int, scores: np.ndarray,
                     labels: np.ndarray) -> list[int]:
        """Unfiltered rows in one batched call; returns rows the index left short (exact fallback)."""
        d, i = self._index.search(q[rows], min(k, self.manifest.n_indexed))
        short = []
        for j, row in enumerate(rows):
            if (i[j] < 0).any():  # an IVF probe or HNSW walk that found fewer than k vectors
                short.append(row)
            else:
                scores[row, : i.shape[1]], labels[row, : i.shape[1]] = d[j], i[j]
        return short

    def _search_filtered(self, q: np.ndarray, masks: list[np.ndarray | None], k: int, scores: np.ndarray,
                         labels: np.ndarray) -> list[int]:
        """Filtered rows by over-fetching; returns the rows to score exactly over their allowed items."""
        n = self.manifest.n_indexed
        exact_rows: list[int] = []
        fetch: dict[int, int] = {}
        for row, mask in enumerate(masks):
            if mask is None:
                continue
            allowed = int(np.count_nonzero(mask))
            if allowed <= max(k, self.exact_subset_max):
                exact_rows.append(row)
                continue
            want = 1 << math.ceil(math.log2(max(2 * k, 2 * k * n / allowed)))
            if min(want, n) > self.max_fetch:
                exact_rows.append(row)
            else:
                fetch[row] = min(want, n)
        while fetch:
            by_size: dict[int, list[int]] = {}
            for row, size in fetch.items():
                by_size.setdefault(size, []).append(row)
            fetch = {}
            for size, rows in by_size.items():
                d, i = self._index.search(q[rows], size)
                for j, row in enumerate(rows):
                    found = i[j] >= 0
                    hit = np.flatnonzero(found & masks[row][np.where(found, i[j], 0)])  # type: ignore[index]
                    if len(hit) >= k:
                        scores[row], labels[row] = d[j, hit[:k]], i[j, hit[:k]]
                    elif size >= min(n, self.max_fetch) or found.sum() < size:
                        exact_rows.append(row)  # over-fetch exhausted, or the index returned all it could
                    else:
                        fetch[row] = min(size * 4, n, self.max_fetch)
        return exact_rows

    def _exact(self, query: np.ndarray, mask: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k (scores, labels) over the allowed labels (all when ``mask`` is None), padded."""
        n = self.manifest.n_indexed
        chosen = np.arange(n) if mask is None else np.flatnonzero(mask)
        best_s = np.empty(0, dtype=np.float32)
        best_l = np.empty(0, dtype=np.int64)
        chunk = 65_536  # bounds the gathered copy to 16 MB at d=64
        for start in range(0, len(chosen), chunk):
            part = chosen[start: start + chunk]
            # einsum, not `@`: numpy's OpenBLAS gemv took 7 ms for [16k, 64] x [64] on 2 cores, einsum 0.4 ms
            s = np.concatenate([best_s, np.einsum("ij,j->i", self._vectors(part), query)])
            lab = np.concatenate([best_l, part])
            if len(s) > k:
                top = np.argpartition(-s, k - 1)[:k]
                s, lab = s[top], lab[top]
            best_s, best_l = s, lab
        order = np.lexsort((best_l, -best_s))
        out_s = np.full(k, -np.inf, dtype=np.float32)
        out_l = np.full(k, -1, dtype=np.int64)
        out_s[: len(order)], out_l[: len(order)] = best_s[order], best_l[order]
        return out_s, out_l

    def _vectors(self, labels: np.ndarray) -> np.ndarray:
        if self._flat_view is not None:
            return self._flat_view[labels]
        # IVF keeps vectors in per-list storage: reconstruct through the direct map (PQ: decoded codes,
        # as approximate as the index itself)
        return self._index.reconstruct_batch(labels.astype(np.int64))

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(f"queries must be [batch, {self.manifest.dim}], got shape {q.shape}")
        return q

    def _check_masks(self, allowed: list[np.ndarray | None] | None, batch: int) -> list[np.ndarray | None]:
        """Masks over item ids -> masks over index labels (ids >= 2); None stays None."""
        if allowed is None:
            return [None] * batch
        if len(allowed) != batch:
            raise ValueError(f"allowed has {len(allowed)} masks for {batch} queries")
        out: list[np.ndarray | None] = []
        for i, m in enumerate(allowed):
            if m is None:
                out.append(None)
                continue
            m = np.asarray(m)
            if m.dtype != np.bool_ or m.shape != (self.manifest.n_items,):
                raise ValueError(f"allowed[{i}] must be a bool mask of shape ({self.manifest.n_items},), "
                                 f"got {m.dtype} {m.shape}")
            out.append(m[RESERVED_IDS:])
        return out

    # ---- files --------------------------------------------------------------------------------

    def serialized_bytes(self) -> int:
        """Size of the index as written to disk (about its memory), without writing it."""
        return int(faiss.serialize_index(self._index).nbytes)

    def save(self, directory: Path) -> Path:
        """Write ``index.faiss`` and ``manifest.json`` into ``directory``, each through a temporary file.

        The index is renamed into place first: a crash between the two renames leaves a manifest whose
        hash no longer matches, which ``load`` refuses, instead of a silently mismatched pair.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp_index = directory / f".{INDEX_FILE}.{os.getpid()}.tmp"
        tmp_manifest = directory / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
        faiss.write_index(self._index, str(tmp_index))
        fsync_path(tmp_index)
        self.manifest = replace(self.manifest, index_sha256=file_sha256(tmp_index))
        tmp_manifest.write_text(json.dumps(self.manifest.to_dict(), indent=2))
        fsync_path(tmp_manifest)
        os.replace(tmp_index, directory / INDEX_FILE)
        os.replace(tmp_manifest, directory / MANIFEST_FILE)
        return directory

    @classmethod
    def load(cls, directory: Path, *, dim: int, n_items: int, vocab_fingerprint: str,
             threads: int = 1) -> ItemIndex:
        """Load a saved index after checking it belongs to these embeddings and is the file it claims."""
        directory = Path(directory)
        manifest_path, index_path = directory / MANIFEST_FILE, directory / INDEX_FILE
        if not manifest_path.is_file():
            raise ArtifactError(f"{manifest_path}: missing; {directory} is not a saved rayrec item index")
        try:
            data = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{manifest_path}: not valid JSON ({e})") from None
        manifest = IndexManifest.from_dict(data, manifest_path)
        expected = {"dim": dim, "n_items": n_items, "vocab_fingerprint": vocab_fingerprint}
        for key, want in expected.items():
            got = getattr(manifest, key)
            if got != want:
                raise ArtifactError(f"{manifest_path}: index built for {key}={got!r}, but the model/data "
                                    f"have {key}={want!r}; rebuild the index from the current embeddings")
        if not index_path.is_file():
            raise ArtifactError(f"{index_path}: missing, though {manifest_path} describes it")
        digest = file_sha256(index_path)
        if digest != manifest.index_sha256:
            raise ArtifactError(f"{index_path}: SHA-256 {digest[:16]}… does not match "
                                f"{manifest.index_sha256[:16]}… in {manifest_path}; the file is corrupt or was replaced")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise ArtifactError(f"{index_path}: FAISS cannot read it ({e})") from None
        if index.d != manifest.dim or index.ntotal != manifest.n_indexed:
            raise ArtifactError(f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, the manifest says "
                                f"{manifest.n_indexed} of dim {manifest.dim}")
        _apply_search_params(index, manifest.kind, manifest.params)
        faiss.omp_set_num_threads(threads)
        return cls(index, manifest, threads)


# ---- building and tuning --------------------------------------------------------------------------


@dataclass
class _Candidate:
    kind: str
    index: faiss.Index
    params: dict[str, Any]
    recall: float
    qps: float
    build_s: float
    trials: list[dict[str, Any]]


def build_item_index(embeddings: np.ndarray, cfg: IndexConfig, vocab_fingerprint: str,
                     queries: np.ndarray | None = None, progress: Progress | None = None) -> ItemIndex:
    """Build, tune and measure the item index for ``embeddings`` [n_items, d] (row i = item id i).

    ``queries``: a sample of real user vectors for measuring recall and queries/s; None samples
    ``cfg.recall_queries`` item vectors with a little noise. See the module docstring for the choice.
    """
    say: Progress = progress or (lambda _msg: None)
    vectors = _check_embeddings(embeddings)
    n, d = vectors.shape
    faiss.omp_set_num_threads(cfg.threads)
    sample = measurement_queries(vectors, queries, cfg)
    k = min(cfg.recall_k, n)
    start = time.perf_counter()
    _, exact_labels = faiss.knn(sample, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)  # IndexFlatIP's kernel
    exact_qps = len(sample) / (time.perf_counter() - start)
    say(f"exact search: {exact_qps:,.0f} queries/s over {n:,} items ({cfg.threads} thread(s))")

    kind = choose_kind(n, cfg)
    tune = cfg.kind == "auto"
    best = _build_kind(kind, vectors, cfg, sample, exact_labels, k, tune, exact_qps, say)
    if tune and kind == "ivf_flat" and _prunes_poorly(best, cfg):
        say(f"ivf_flat needs nprobe={best.params['nprobe']} of {best.params['nlist']} lists for recall "
            f"{best.recall:.3f}: the embeddings barely cluster, trying hnsw")
        hnsw = _build_kind("hnsw", vectors, cfg, sample, exact_labels, k, tune, exact_qps, say)
        best = max(best, hnsw, key=lambda c: (c.recall >= cfg.min_recall, c.qps, c.recall))
    if tune and best.kind != "flat" and best.qps < exact_qps:
        say(f"{best.kind} ({best.qps:,.0f} q/s) is slower than exact search ({exact_qps:,.0f} q/s): using flat")
        best = _build_kind("flat", vectors, cfg, sample, exact_labels, k, tune, exact_qps, say)
    say(f"chose {best.kind} {best.params}: recall@{k} {best.recall:.4f}, {best.qps:,.0f} q/s "
        f"({best.qps / exact_qps:.1f}× exact)")
    manifest = IndexManifest(
        kind=best.kind, requested=cfg.kind, dim=d, n_items=n + RESERVED_IDS, n_indexed=n,
        vocab_fingerprint=vocab_fingerprint, params=best.params, recall_at_k=best.recall, recall_k=k,
        qps=best.qps, exact_qps=exact_qps, build_s=best.build_s, index_sha256="", tuning=best.trials,
    )
    return ItemIndex(best.index, manifest, cfg.threads)


def choose_kind(n_indexed: int, cfg: IndexConfig) -> str:
    """The kind built first: the configured one, or by catalog size under ``auto``."""
    if cfg.kind != "auto":
        return cfg.kind
    if n_indexed <= cfg.flat_max_items:
        return "flat"
    if n_indexed >= cfg.pq_min_items:
        return "ivf_pq"
    return "ivf_flat"


def default_nlist(n_indexed: int, n_train: int) -> int:
    """About 4·sqrt(items) lists, but never fewer than ``MIN_POINTS_PER_LIST`` training points per list."""
    return max(1, min(round(4 * math.sqrt(n_indexed)), n_train // MIN_POINTS_PER_LIST))


def measurement_queries(vectors: np.ndarray, queries: np.ndarray | None, cfg: IndexConfig) -> np.ndarray:
    """The queries recall and queries/s are measured on: up to ``recall_queries`` of ``queries``, or
    sampled item vectors with noise of norm ``QUERY_NOISE``, re-normalised (user vectors sit near, not
    on, the items they like)."""
    rng = np.random.default_rng(cfg.seed)
    d = vectors.shape[1]
    if queries is not None:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != d or len(q) == 0:
            raise ValueError(f"queries must be a non-empty [batch, {d}] array, got shape {q.shape}")
        if len(q) > cfg.recall_queries:
            q = q[np.sort(rng.choice(len(q), cfg.recall_queries, replace=False))]
        return np.ascontiguousarray(q)
    rows = rng.choice(len(vectors), min(cfg.recall_queries, len(vectors)), replace=len(vectors) < cfg.recall_queries)
    noise = rng.standard_normal((len(rows), d)).astype(np.float32) * (QUERY_NOISE / math.sqrt(d))
    q = vectors[rows] + noise
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top-k (ignoring -1 padding) that ``found`` contains."""
    shares = []
    for f, e in zip(found, exact):
        e = e[e >= 0]
        if len(e):
            shares.append(len(np.intersect1d(f, e, assume_unique=False)) / len(e))
    return float(np.mean(shares)) if shares else 1.0


def _build_kind(kind: str, vectors: np.ndarray, cfg: IndexConfig, sample: np.ndarray, exact: np.ndarray, k: int,
                tune: bool, exact_qps: float, say: Progress) -> _Candidate:
    n, d = vectors.shape
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        # the same kernel as the exact reference on the same queries: measuring again would only add noise
        return _Candidate("flat", index, {}, 1.0, exact_qps, time.perf_counter() - start,
                          [{"recall": 1.0, "qps": exact_qps}])
    if kind == "hnsw":
        index = faiss.index_factory(d, f"HNSW{cfg.hnsw_m}", faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.add(vectors)
        params: dict[str, Any] = {"M": cfg.hnsw_m, "ef_construction": cfg.ef_construction}
        # FAISS searches with max(efSearch, k): tuning from below k would only repeat one measurement
        first = max(cfg.ef_search, k) if tune else cfg.ef_search
        knob, cap = "ef_search", max(first, EF_SEARCH_CAP)
    elif kind in ("ivf_flat", "ivf_pq"):
        index, params = _train_ivf(kind, vectors, cfg)
        index.add(vectors)
        knob, first, cap = "nprobe", min(cfg.nprobe, params["nlist"]), params["nlist"]
    else:
        raise ConfigError(f"index.kind: unknown index kind {kind!r}")
    build_s = time.perf_counter() - start
    say(f"{kind}: built {params} over {n:,} items in {build_s:.1f}s")
    trials = []
    value = first
    while True:
        _apply_search_params(index, kind, {knob: value})
        recall, qps = _measure(index, sample, exact, k)
        trials.append({knob: value, "recall": recall, "qps": qps})
        say(f"{kind}: {knob}={value} recall@{k} {recall:.4f} {qps:,.0f} q/s")
        if not tune or recall >= cfg.min_recall or value >= cap:
            break
        if len(trials) > 1 and recall - trials[-2]["recall"] < PLATEAU_GAIN:
            break
        value = min(2 * value, cap)
    reached = [t for t in trials if t["recall"] >= cfg.min_recall]
    chosen = reached[0] if reached else max(trials, key=lambda t: (t["recall"], t["qps"]))
    params[knob] = chosen[knob]
    _apply_search_params(index, kind, params)
    return _Candidate(kind, index, params, chosen["recall"], chosen["qps"], build_s, trials)


def _train_ivf(kind: str, vectors: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    n, d = vectors.shape
    rng = np.random.default_rng(cfg.seed)
    n_train = min(cfg.train_sample, n)
    if cfg.nlist is not None and cfg.nlist > n_train:
        raise ConfigError(f"index.nlist={cfg.nlist} exceeds the {n_train:,} vectors available to train it")
    nlist = cfg.nlist if cfg.nlist is not None else default_nlist(n, n_train)
    params: dict[str, Any] = {"nlist": nlist}
    if kind == "ivf_pq":
        if d % cfg.pq_m:
            raise ConfigError(f"index.pq_m={cfg.pq_m} must divide the embedding dimension {d}")
        if n_train < 2**PQ_NBITS:
            raise ConfigError(f"index.kind=ivf_pq needs at least {2**PQ_NBITS} items to train its codebooks, "
                              f"got {n_train}")
        factory = f"IVF{nlist},PQ{cfg.pq_m}x{PQ_NBITS}"
        params |= {"pq_m": cfg.pq_m, "pq_nbits": PQ_NBITS}
    else:
        factory = f"IVF{nlist},Flat"
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.seed = cfg.seed
    if kind == "ivf_pq":
        index.pq.cp.seed = cfg.seed
        index.do_polysemous_training = False  # the factory turns it on; it costs minutes and search never uses it
    rows = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
    index.train(np.ascontiguousarray(vectors[rows]))
    return index, params


def _measure(index: faiss.Index, sample: np.ndarray, exact: np.ndarray, k: int) -> tuple[float, float]:
    start = time.perf_counter()
    _, found = index.search(sample, k)
    qps = len(sample) / (time.perf_counter() - start)
    return recall_at_k(found, exact), qps


def _prunes_poorly(c: _Candidate, cfg: IndexConfig) -> bool:
    return c.recall < cfg.min_recall or c.params["nprobe"] * IVF_PRUNING_LIMIT > c.params["nlist"]


def _apply_search_params(index: faiss.Index, kind: str, params: dict[str, Any]) -> None:
    if kind in ("ivf_flat", "ivf_pq") and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw" and "ef_search" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Rows >= 2 as a contiguous float32 view (no copy when already float32)."""
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] <= RESERVED_IDS or e.shape[1] < 1:
        raise ValueError(f"embeddings must be [n_items > {RESERVED_IDS}, d], got shape {e.shape}")
    vectors = np.ascontiguousarray(e[RESERVED_IDS:], dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings hold NaN or infinite values")
    return vectors


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def _flat_storage(index: faiss.Index) -> np.ndarray | None:
    """A zero-copy [n, d] view of the raw vectors for flat and HNSW-flat indexes, else None."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if not isinstance(index, faiss.IndexFlat):
        return None
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


