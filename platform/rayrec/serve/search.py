"""The search stage: a query → lexical + semantic candidates → fused → re-ordered for a known user.

Runs inside the retrieval replica (the HTTP ingress), batched like recommendations: per batch one
MiniLM call embeds every query, and the personalized queries share one feature-store call and one
ranking call (hops are the CPU budget; see retrieval.py). The ranker scores fused candidates exactly
as it scores retrieved ones (user vector, history, retrieval score = user · item vector), and
``blend_personal`` mixes its order with the text order, so a query still decides what is relevant.
Anonymous queries, users without history and a ranker that does not answer in time all get the
fused text order (``personalized: false``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from rayrec.config import SearchConfig
from rayrec.index.text_search import ProductSearch, SearchHits, blend_personal, tier_candidates
from rayrec.serve.catalog import ItemFilter
from rayrec.serve.retrieval import RetrievalStage


@dataclass(frozen=True)
class SearchQuery:
    query: str
    k: int
    user_id: str | None = None
    item_filter: ItemFilter = field(default_factory=ItemFilter)


class SearchStage:
    def __init__(self, retrieval: RetrievalStage, cfg: SearchConfig) -> None:
        core = retrieval.core
        self.retrieval, self.cfg = retrieval, cfg
        self.engine = ProductSearch.load(core.release.layout.search, cfg, core.catalog.n_items,
                                         core.release.manifest.vocab_fingerprint, device=str(core.device))
        batching = retrieval.cfg.retrieval
        self._batch.set_max_batch_size(batching.batch_max_size)
        self._batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def search(self, query: SearchQuery) -> dict[str, Any]:
        return await self._batch(query)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)  # sizes set from config in __init__
    async def _batch(self, queries: list[SearchQuery]) -> list[dict[str, Any]]:
        metrics, t = self.retrieval.metrics, time.perf_counter()
        catalog = self.retrieval.core.catalog
        hits = self.engine.candidates([q.query for q in queries], [catalog.allowed(q.item_filter) for q in queries])
        t = metrics.stage("search", t)
        orders = await self._personal_orders(queries, hits)
        metrics.stage("search_personalize", t)
        return [self._result(q, h, orders.get(i)) for i, (q, h) in enumerate(zip(queries, hits))]

    async def _personal_orders(self, queries: list[SearchQuery], hits: list[SearchHits]) -> dict[int, np.ndarray]:
        """Per personalized query (by position): the order of its hits; none for the others."""
        stage, core = self.retrieval, self.retrieval.core
        rows = [i for i, (q, h) in enumerate(zip(queries, hits)) if q.user_id and len(h.items) > 1]
        if not rows or not self.cfg.personalize or stage.ranking is None or not stage.cfg.use_ranker:
            return {}
        users = [str(queries[i].user_id) for i in rows]
        histories = await stage.store.histories(users)
        user_vec, h = core.user_vectors(users, histories, int(time.time() * 1000))
        batch = core.candidate_batch(user_vec, h, tier_candidates([hits[i] for i in rows], self.cfg))
        scores = await stage.rank(batch)
        if scores is None:
            return {}
        return {i: blend_personal(hits[i], scores[j], self.cfg) for j, i in enumerate(rows) if not batch.cold_start[j]}

    def _result(self, query: SearchQuery, hits: SearchHits, order: np.ndarray | None) -> dict[str, Any]:
        catalog = self.retrieval.core.catalog
        positions = (order if order is not None else np.arange(len(hits.items)))[: query.k]
        items = [{**catalog.describe(int(hits.items[p])), "score": float(hits.score[p]),
                  "sources": {"lexical": int(hits.lexical_rank[p]) or None,
                              "semantic": int(hits.semantic_rank[p]) or None}} for p in positions]  # fmt: skip
        return {"items": items, "personalized": order is not None, "reason": hits.reason,
                "candidates": len(hits.items), "version": self.retrieval.core.version}
