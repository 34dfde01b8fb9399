"""The retrieval stage: recent history → user tower → FAISS candidates, batched, crossing to the
ranking stage once per batch.

``RetrievalCore`` is plain Python over one release (testable without Serve); ``RetrievalStage``
batches requests with ``@serve.batch`` inside the HTTP ingress replica (``api.Retrieval``), so a
request crosses no Serve hop of its own: the feature store and the ranker are called once per batch
(hops are the CPU budget on small machines; see docs/decisions/0013).
Everything in a response comes from this replica's release, so a response never mixes versions;
the payload names its version and is ranked by that release's ranker (see ranking.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.exceptions import RayError

from rayrec.artifacts import load_two_tower_model
from rayrec.config import ServeConfig
from rayrec.features.batches import dense_history_inputs, without_history
from rayrec.features.trend import append_trending, trending_first, trending_order
from rayrec.features.vocab import UNK_ID, Vocabulary
from rayrec.index.ann import ItemIndex
from rayrec.release import ReleaseLayout, load_release
from rayrec.serve.catalog import PURCHASE_STAGE, ItemFilter, ServingCatalog
from rayrec.serve.feature_store import UserHistory

log = logging.getLogger(__name__)


class ReleaseMismatch(RuntimeError):
    """A stage was asked to work on another release version than the one it holds (mid-rollout)."""


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    k: int
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    exclude_purchased: bool = True


@dataclass
class CandidateBatch:
    """Retrieval output for a batch of queries; rows follow the queries. ``cand`` pads with -1."""

    user_vec: np.ndarray  # float32 [B, d]
    hist_items: np.ndarray  # int64 [B, L]
    hist_gaps_s: np.ndarray  # float32 [B, L]
    cand: np.ndarray  # int64 [B, C]
    retrieval_score: np.ndarray  # float32 [B, C], -inf where cand is -1
    cold_start: np.ndarray  # bool [B]: no usable history

    def ranking_payload(self, version: str) -> dict[str, Any]:
        return {"version": version, "user_vec": self.user_vec, "hist_items": self.hist_items,
                "hist_gaps_s": self.hist_gaps_s, "cand": self.cand, "retrieval_score": self.retrieval_score}


class RetrievalCore:
    def __init__(self, release_dir: Path, device: str = "cpu") -> None:
        self.release = load_release(Path(release_dir))
        manifest, layout = self.release.manifest, self.release.layout
        self.version: str = manifest.version
        fingerprint = manifest.vocab_fingerprint
        self.catalog = ServingCatalog(layout.items, manifest.n_items, manifest.title_tokens)
        self.device = torch.device(device)
        self.model = load_two_tower_model(layout.two_tower, self.catalog.features, fingerprint).to(self.device)
        self.history_length = int(self.model.spec.history_length)
        self.users = Vocabulary.load(layout.path, "users") if manifest.use_user_id else None
        self.embeddings = np.load(layout.embeddings).astype(np.float32)
        self.index = ItemIndex.load(layout.index, dim=manifest.dim, n_items=manifest.n_items,
                                    vocab_fingerprint=fingerprint)
        self.trend_counts = np.load(layout.trend)
        self.trending = trending_order(self.trend_counts, self.catalog.recommendable)
        self.cold_start_trending = manifest.cold_start_trending

    def history_arrays(self, histories: Sequence[UserHistory], now_ms: int) -> dict[str, np.ndarray]:
        """Model inputs from stored histories: items this release does not know are left out, the
        newest ``history_length`` kept, gaps measured to ``now_ms``."""
        b, length = len(histories), self.history_length
        items = np.zeros((b, length), dtype=np.int64)
        stages = np.zeros((b, length), dtype=np.int64)
        gaps = np.zeros((b, length), dtype=np.float32)
        for row, h in enumerate(histories):
            ids = self.catalog.ids_of(list(h.item_ids))
            known = ids != UNK_ID
            ids = ids[known][-length:]
            n = len(ids)
            if n == 0:
                continue
            items[row, -n:] = ids
            stages[row, -n:] = np.asarray(h.stages, dtype=np.int64)[known][-n:]
            ts = np.asarray(h.ts_ms, dtype=np.int64)[known][-n:]
            gaps[row, -n:] = np.maximum(now_ms - ts, 0) / 1000.0
        return dense_history_inputs(items, stages, gaps)

    def _user_idx(self, user_ids: Sequence[str]) -> torch.Tensor | None:
        if self.users is None:
            return None
        return torch.as_tensor([self.users.id_of(u) for u in user_ids], dtype=torch.long)

    @torch.no_grad()
    def user_vectors(self, user_ids: Sequence[str], histories: Sequence[UserHistory],
                     now_ms: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """User-tower vectors [B, d] and the history arrays they were computed from."""
        h = self.history_arrays(histories, now_ms)
        t = {k: torch.as_tensor(v, device=self.device) for k, v in h.items()}
        user_idx = self._user_idx(user_ids)
        user_vec = self.model.user_embedding(t["hist_items"], t["hist_types"], t["hist_gaps"],
                                             None if user_idx is None else user_idx.to(self.device))
        return user_vec.float().cpu().numpy(), h

    def candidate_batch(self, user_vec: np.ndarray, h: dict[str, np.ndarray], cand: np.ndarray) -> CandidateBatch:
        """Given candidates [B, C] (-1 pads) scored for the ranker. Exact inner products from the stored
        vectors: IVF-PQ scores are approximate, and the ranker was trained on exact ones."""
        score = np.einsum("bd,bcd->bc", user_vec, self.embeddings[np.maximum(cand, 0)]).astype(np.float32)
        score[cand < 0] = -np.inf
        return CandidateBatch(user_vec=user_vec, hist_items=h["hist_items"], hist_gaps_s=h["hist_gaps_s"],
                              cand=cand.astype(np.int64), retrieval_score=score,
                              cold_start=without_history(h["hist_items"]))

    def candidates(self, queries: Sequence[RecommendQuery], histories: Sequence[UserHistory], now_ms: int,
                   n_candidates: int, n_trending: int = 0) -> CandidateBatch:
        """FAISS's top ``n_candidates`` (at least each query's k) plus the ``n_trending`` most
        interacted-with items of the release's trend window that the query allows and FAISS missed.
        Under the release's trending cold-start policy, a query without history gets the trending
        items it allows first, in trend order (``results`` keeps that order)."""
        user_vec, h = self.user_vectors([q.user_id for q in queries], histories, now_ms)
        allowed = [self.catalog.allowed(q.item_filter, self._purchased(h["hist_items"][i], h["hist_types"][i])
                                        if q.exclude_purchased else None) for i, q in enumerate(queries)]
        c = max(n_candidates, max(q.k for q in queries))
        _, cand = self.index.search(user_vec, c, allowed if any(a is not None for a in allowed) else None)

        def permitted(row: int, ids: np.ndarray) -> np.ndarray:
            mask = allowed[row]
            return np.ones(len(ids), dtype=bool) if mask is None else mask[ids]

        if n_trending:
            cand = append_trending(cand, self.trending, n_trending, permitted)
        cold = np.flatnonzero(without_history(h["hist_items"])) if self.cold_start_trending else []
        if len(cold):
            cand[cold] = trending_first(cand[cold], self.trending, lambda row, ids: permitted(int(cold[row]), ids))
        return self.candidate_batch(user_vec, h, cand)

    def needs_ranking(self, batch: CandidateBatch) -> bool:
        """False when every query of ``batch`` keeps its trend order (all cold starts under the trending
        policy): the ranking hop would be scored and ignored."""
        return not (self.cold_start_trending and bool(batch.cold_start.all()))

    @staticmethod
    def _purchased(items: np.ndarray, types: np.ndarray) -> np.ndarray:
        return np.unique(items[(types == PURCHASE_STAGE + 1) & (items > 0)])

    def results(self, batch: CandidateBatch, queries: Sequence[RecommendQuery],
                rank_score: np.ndarray | None) -> list[dict[str, Any]]:
        """Per query: the top k (ranker order when ``rank_score`` is given, else retrieval order; a
        cold start under the trending policy keeps its candidates' trend order, scored by trend count)."""
        out = []
        for row, q in enumerate(queries):
            valid = batch.cand[row] >= 0
            n = min(q.k, int(valid.sum()))
            trend_ordered = self.cold_start_trending and bool(batch.cold_start[row])
            if trend_ordered:
                order_score = self.trend_counts[np.maximum(batch.cand[row], 0)].astype(np.float64)
                order = np.flatnonzero(valid)[:n]
            else:
                order_score = rank_score[row] if rank_score is not None else batch.retrieval_score[row]
                order = np.argsort(-np.where(valid, order_score, -np.inf), kind="stable")[:n]
            items = [{**self.catalog.describe(int(batch.cand[row, j])), "score": float(order_score[j]),
                      "retrieval_score": float(batch.retrieval_score[row, j])} for j in order]  # fmt: skip
            out.append({"items": items, "cold_start": bool(batch.cold_start[row]), "version": self.version,
                        "reranked": rank_score is not None and not trend_ordered, "candidates": int(valid.sum())})
        return out

    def similar(self, item_id: str, k: int, item_filter: ItemFilter | None = None) -> dict[str, Any] | None:
        """Item-to-item neighbours by item-tower cosine; None for an item this release does not know."""
        idx = self.catalog.index_of.get(item_id)
        if idx is None:
            return None
        exclude = np.asarray([idx])
        allowed = self.catalog.allowed(item_filter or ItemFilter(), exclude)
        scores, ids = self.index.search(self.embeddings[idx:idx + 1], k, [allowed])
        items = [{**self.catalog.describe(int(i)), "score": float(s)} for i, s in zip(ids[0], scores[0]) if i >= 0]
        return {"item": self.catalog.describe(idx), "items": items, "version": self.version}


def _now_ms() -> int:
    return int(time.time() * 1000)


def replica_device(num_gpus: float) -> str:
    """The GPU when the replica was given one and CUDA is there; CPU otherwise (logical GPUs on a CPU
    box, or a CPU-only torch build), said once in the replica log."""
    if num_gpus > 0:
        if torch.cuda.is_available():
            return "cuda"
        log.warning("replica reserved %s GPU but CUDA is not available to torch; running on CPU", num_gpus)
    return "cpu"


class StageMetrics:
    """Per-stage latency histograms, candidate counts and cold starts, exported with Serve's metrics."""

    BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.latency = Histogram("rayrec_stage_latency_ms", description="Latency of one serving stage per batch.",
                                 boundaries=self.BOUNDARIES_MS, tag_keys=("stage",))
        self.candidates = Histogram("rayrec_candidates", description="Candidates retrieved per request.",
                                    boundaries=[1, 10, 20, 50, 100, 200, 500, 1000])
        self.cold_starts = Counter("rayrec_cold_starts", description="Requests answered by the cold-start path.")
        self.batch_size = Histogram("rayrec_retrieval_batch_size", description="Requests per retrieval batch.",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128])

    def stage(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.latency.observe((now - started) * 1000, tags={"stage": name})
        return now


class RetrievalStage:
    """What a retrieval replica does per request, batched: the HTTP ingress deployment (``api.py``)
    owns one. Per batch: one feature-store call, the user tower and FAISS over the whole batch, one
    ranking call."""

    def __init__(self, release_dir: str, cfg: ServeConfig, ranking: Any | None) -> None:
        from rayrec.serve.feature_store import ActorFeatureStore

        self.cfg = cfg
        self.core = RetrievalCore(Path(release_dir), replica_device(cfg.retrieval.num_gpus))
        self.store = ActorFeatureStore.connect(cfg.feature_store, Path(cfg.feature_store.dir),
                                               ReleaseLayout(Path(release_dir)).histories, store_name=cfg.app_name)
        self.ranking = ranking
        self.metrics = StageMetrics()
        self._batch.set_max_batch_size(cfg.retrieval.batch_max_size)
        self._batch.set_batch_wait_timeout_s(cfg.retrieval.batch_wait_timeout_s)

    async def recommend(self, query: RecommendQuery) -> dict[str, Any]:
        return await self._batch(query)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)  # sizes set from config in __init__
    async def _batch(self, queries: list[RecommendQuery]) -> list[dict[str, Any]]:
        t = time.perf_counter()
        self.metrics.batch_size.observe(len(queries))
        histories = await self.store.histories([q.user_id for q in queries])
        t = self.metrics.stage("feature_store", t)
        batch = self.core.candidates(queries, histories, _now_ms(), self.cfg.candidates, self.cfg.trending_candidates)
        t = self.metrics.stage("retrieval", t)
        ranked = self.ranking is not None and self.cfg.use_ranker and self.core.needs_ranking(batch)
        rank_score = await self.rank(batch) if ranked else None
        self.metrics.stage("ranking", t)
        results = self.core.results(batch, queries, rank_score)
        for r in results:
            self.metrics.candidates.observe(r["candidates"])
            if r["cold_start"]:
                self.metrics.cold_starts.inc()
        return results

    async def rank(self, batch: CandidateBatch) -> np.ndarray | None:
        """Ranking scores, or None (retrieval order) when ranking does not answer in time or fails:
        a slow or restarting ranking replica degrades answers instead of holding them."""
        payload = batch.ranking_payload(self.core.version)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.ranking_timeout_s
        for attempt in range(3):  # None: no ranker could load this release (say, deleted mid-rollout)
            try:
                scores = await asyncio.wait_for(self.ranking.rank.remote(payload), max(deadline - loop.time(), 1e-3))
            except asyncio.TimeoutError:
                log.warning("ranking gave no answer within %.2f s; answering in retrieval order",
                            self.cfg.ranking_timeout_s)
                return None
            except RayError as e:  # a ranking replica died mid-call; Serve replaces it
                log.warning("ranking failed (%s); answering in retrieval order", type(e).__name__)
                return None
            if scores is not None:
                return scores
            await asyncio.sleep(0.05 * (attempt + 1))
        log.warning("no ranking replica could rank release %s; answering in retrieval order", self.core.version)
        return None

    async def ready(self) -> dict[str, Any]:
        import ray

        ranking = await self.ranking.ready.remote() if self.ranking is not None else None
        return {"version": self.core.version, "index": self.core.index.manifest.kind,
                "items": int(self.core.catalog.recommendable.sum()), "device": str(self.core.device),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "replica": serve.get_replica_context().replica_id.unique_id, "ranking": ranking}
