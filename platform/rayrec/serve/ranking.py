"""The ranking stage: the release's ranker (dense or compressed) over retrieved candidates.

Retrieval sends one payload per batch of requests; ``@serve.batch`` merges payloads arriving from
several retrieval replicas into one forward pass. ``RankingCore`` is the plain-Python part.

A payload is always scored by the ranker of the release that retrieved it. Mid-rollout a replica
gets payloads of the other release too (Serve rolls the two deployments independently), so it loads
that release's ranker beside its own (one other at most, checked against the release's hashes);
answers stay reranked and never mix versions. A release that cannot be loaded answers None and
retrieval falls back to its own order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from rayrec.artifacts import ArtifactError, load_ranker_model
from rayrec.features.items import ItemFeatureTable
from rayrec.models.ranker import inference_graph
from rayrec.release import load_release, resolve_release
from rayrec.serve.retrieval import ReleaseMismatch, replica_device

PAYLOAD_ARRAYS = ("user_vec", "hist_items", "hist_gaps_s", "cand", "retrieval_score")

log = logging.getLogger(__name__)


class RankingCore:
    def __init__(self, release_dir: Path, purchase_weight: float, device: str = "cpu",
                 torchscript: bool = True, trend_boost: float | None = None) -> None:
        release = load_release(Path(release_dir))
        manifest, layout = release.manifest, release.layout
        if not manifest.has_ranker:
            raise FileNotFoundError(f"{layout.path}: this release has no ranker; set serve.use_ranker=false")
        self.version: str = manifest.version
        self.compression = manifest.ranker_compression
        items = ItemFeatureTable.from_parquet(layout.items, manifest.n_items, manifest.title_tokens)
        self.device = torch.device(device)
        self.model = load_ranker_model(layout.ranker, items, manifest.vocab_fingerprint).to(self.device)
        if trend_boost is not None:
            self.model.spec = replace(self.model.spec, trend_boost=trend_boost)
        # As of the release's build: events posted since then do not move the counts until the next release.
        self.trend = torch.as_tensor(np.load(layout.trend), device=self.device)
        self.scorer = inference_graph(self.model) if torchscript else self.model.eval()
        self.purchase_weight = purchase_weight

    @torch.no_grad()
    def score(self, payload: dict[str, Any]) -> np.ndarray:
        """[B, C] ranking scores; -inf where the candidate is padding (-1)."""
        if payload["version"] != self.version:
            raise ReleaseMismatch(f"ranking holds release {self.version}, asked for {payload['version']}")
        t = {k: torch.as_tensor(payload[k], device=self.device) for k in PAYLOAD_ARRAYS}
        valid = t["cand"] >= 0
        cand = t["cand"].clamp(min=0)
        trend = self.trend[cand]
        logits = self.scorer(t["user_vec"], t["hist_items"], t["hist_gaps_s"], cand,
                            t["retrieval_score"].masked_fill(~valid, 0.0), trend)
        scores = self.model.score(logits, trend, self.purchase_weight, t["hist_items"], cand)
        return scores.masked_fill(~valid, -torch.inf).float().cpu().numpy()


def merge_payloads(payloads: list[dict[str, Any]]) -> tuple[dict[str, Any], list[int], list[int]]:
    """Several batches as one: candidate lists padded to the longest (cand -1); returns the merged
    payload, the rows of each part and its candidate count, to split the scores again."""
    width = max(p["cand"].shape[1] for p in payloads)
    merged: dict[str, Any] = {"version": payloads[0]["version"]}
    for name in PAYLOAD_ARRAYS:
        parts = []
        for p in payloads:
            a = p[name]
            if name in ("cand", "retrieval_score") and a.shape[1] < width:
                fill = -1 if name == "cand" else 0.0
                a = np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), fill, dtype=a.dtype)], axis=1)
            parts.append(a)
        merged[name] = np.concatenate(parts)
    return merged, [len(p["cand"]) for p in payloads], [p["cand"].shape[1] for p in payloads]


def _score(core: RankingCore, payloads: list[dict[str, Any]]) -> list[np.ndarray]:
    merged, rows, widths = merge_payloads(payloads)
    scores = core.score(merged)
    out, lo = [], 0
    for n, w in zip(rows, widths):
        out.append(scores[lo:lo + n, :w])
        lo += n
    return out


class Ranking:
    """Serve deployment (decorated in ``app.py``)."""

    def __init__(self, release_dir: str, serve_cfg: dict[str, Any], purchase_weight: float) -> None:
        from rayrec.config import ServeConfig
        from rayrec.runtime import set_threads

        cfg = ServeConfig.model_validate(serve_cfg)
        set_threads(cfg.ranking.threads)
        self.device = replica_device(cfg.ranking.num_gpus)
        self._load = partial(RankingCore, purchase_weight=purchase_weight, device=self.device,
                             torchscript=cfg.ranking.torchscript, trend_boost=cfg.trend_boost)
        self.core = self._load(Path(release_dir))
        self._release_root = Path(release_dir).parent
        self._other: RankingCore | None = None  # the release rolling in or out beside this one
        self._loading = asyncio.Lock()
        self.rank.set_max_batch_size(cfg.ranking.batch_max_size)
        self.rank.set_batch_wait_timeout_s(cfg.ranking.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.001)  # sizes set from config in __init__
    async def rank(self, payloads: list[dict[str, Any]]) -> list[np.ndarray | None]:
        """Scores per payload, by its own release's ranker; None where that ranker cannot be loaded."""
        out: list[np.ndarray | None] = [None] * len(payloads)
        for version in dict.fromkeys(p["version"] for p in payloads):
            core = await self._core_for(version)
            if core is None:
                continue
            rows = [i for i, p in enumerate(payloads) if p["version"] == version]
            for i, scores in zip(rows, _score(core, [payloads[i] for i in rows])):
                out[i] = scores
        return out

    async def _core_for(self, version: str) -> RankingCore | None:
        if version == self.core.version:
            return self.core
        async with self._loading:  # concurrent batches of the new version load it once
            if self._other is None or self._other.version != version:
                try:
                    release = resolve_release(self._release_root, version)
                    self._other = await asyncio.to_thread(self._load, release)
                except (ArtifactError, FileNotFoundError) as e:
                    log.warning("cannot rank for release %s beside %s: %s", version, self.core.version, e)
                    return None
                log.info("ranking release %s beside %s (a rollout is under way)", version, self.core.version)
            return self._other

    async def ready(self) -> dict[str, Any]:
        import ray

        return {"version": self.core.version, "compression": self.core.compression, "device": str(self.core.device),
                "trend_boost": self.core.model.spec.trend_boost,
                "collaborative_boost": self.core.model.spec.collaborative_boost,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "replica": serve.get_replica_context().replica_id.unique_id}
