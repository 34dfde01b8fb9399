"""`rayrec evaluate --task search`: lexical, semantic, fused and fused + personalized search, scored on
the temporal split's search events, with the release that would serve them.

A search event's target is the item its session clicked next (``data/examples.py`` pairs them); the
user's history is what they did before the search, as the feature store would hold it. Every system
ranks the whole catalog's text matches (no sampled negatives): lexical and semantic alone are the
fused system's own candidate lists, so the four rows differ only in how the list is ordered.
Personalization runs the release's user tower and ranker over the top ``search.personalize_depth``
fused hits and blends the orders with ``blend_personal``, the function Serve uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import scipy.sparse as sp
import torch

from rayrec.artifacts import ArtifactError, load_ranker_model, load_two_tower_model
from rayrec.config import RayrecConfig
from rayrec.features.batches import example_inputs, without_history
from rayrec.features.items import ItemFeatureTable
from rayrec.features.trend import ItemTrend
from rayrec.index.text_search import ProductSearch, SearchHits, blend_personal, tier_candidates
from rayrec.metrics import ranking_metrics
from rayrec.release import Release, ReleaseManifest, load_release, release_root, resolve_release
from rayrec.train.evaluate import write_report

SPLITS = {"train": 0, "valid": 1, "test": 2}
SYSTEMS = ("lexical", "semantic", "fused", "fused+personalized")
SEARCH_KS = (10, 20, 50)
BATCH = 256


def _ranked(hits: SearchHits, which: str) -> np.ndarray:
    if which == "fused":
        return hits.items
    rank = hits.lexical_rank if which == "lexical" else hits.semantic_rank
    found = rank > 0
    return hits.items[found][np.argsort(rank[found], kind="stable")]


def _padded(lists: list[np.ndarray], k: int) -> np.ndarray:
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for row, items in enumerate(lists):
        out[row, : min(k, len(items))] = items[:k]
    return out


class Personalizer:
    """The release's user tower + ranker over fused hits, offline (what ``serve/search.py`` does).
    The ranker's trend input counts ``trend``'s interactions before each search (Serve reads the
    release's counts as of its build, which offline would be counts from the evaluated future)."""

    def __init__(self, release: Release, purchase_weight: float, trend: ItemTrend) -> None:
        meta, layout = release.manifest, release.layout
        items = ItemFeatureTable.from_parquet(layout.items, meta.n_items, meta.title_tokens)
        fingerprint = meta.vocab_fingerprint
        self.retrieval = load_two_tower_model(layout.two_tower, items, fingerprint)
        self.ranker = load_ranker_model(layout.ranker, items, fingerprint) if meta.has_ranker else None
        self.use_user_id = meta.use_user_id
        self.purchase_weight = purchase_weight
        self.trend = trend
        with torch.no_grad():
            self.item_vectors = self.retrieval.all_item_embeddings().float()

    @staticmethod
    def inputs(examples: pa.Table, history_length: int) -> dict[str, np.ndarray]:
        """What ``candidate_scores`` reads from search example rows (their time included: the trend)."""
        return example_inputs(examples, history_length, extra=("ts_ms",))

    @torch.no_grad()
    def candidate_scores(self, batch: dict[str, np.ndarray], cand: np.ndarray) -> np.ndarray:
        """Ranker scores [B, C] of candidates ``cand`` [B, C] (-1 pads → -inf) for the batch's users."""
        t = {k: torch.as_tensor(v) for k, v in batch.items()}
        users = t["user_idx"] if self.use_user_id else None
        user_vec = self.retrieval.user_embedding(t["hist_items"], t["hist_types"], t["hist_gaps"], users).float()
        c = torch.as_tensor(cand)
        valid = c >= 0
        retrieval_score = (user_vec.unsqueeze(1) * self.item_vectors[c.clamp(min=0)]).sum(-1)
        assert self.ranker is not None
        counts = torch.as_tensor(self.trend.counts(np.maximum(cand, 0), batch["ts_ms"][:, None],
                                                   self.ranker.spec.trend_window_days))
        logits = self.ranker(user_vec, t["hist_items"], t["hist_gaps_s"], c.clamp(min=0),
                             retrieval_score.masked_fill(~valid, 0.0), counts)
        scores = self.ranker.score(logits, counts, self.purchase_weight, t["hist_items"], c.clamp(min=0))
        return scores.masked_fill(~valid, -torch.inf).numpy()

    def orders(self, batch: dict[str, np.ndarray], hits: list[SearchHits], search_cfg: Any) -> list[np.ndarray]:
        """Per row: positions into its hits, personalized where the user has history."""
        scores = self.candidate_scores(batch, tier_candidates(hits, search_cfg))
        has_history = ~without_history(batch["hist_items"])
        return [blend_personal(h, s, search_cfg) if known and len(h.items) > 1 else np.arange(len(h.items))
                for h, s, known in zip(hits, scores, has_history)]


def evaluate_search(engine: ProductSearch, personal: Personalizer | None, examples: pa.Table, n_items: int,
                    history_length: int) -> pd.DataFrame:
    """Metrics per system over ``examples`` (rows with ``query``, target ``item_idx`` and the user's
    history before the search, as in ``processed/search``)."""
    kmax = max(SEARCH_KS)
    ranked: dict[str, list[np.ndarray]] = {s: [] for s in SYSTEMS}
    for lo in range(0, examples.num_rows, BATCH):
        part = examples.slice(lo, BATCH)
        queries = [str(q) for q in part.column("query").to_pylist()]
        hits = engine.candidates(queries, [None] * len(queries))
        for s in SYSTEMS[:3]:
            ranked[s].extend(_ranked(h, s)[:kmax] for h in hits)
        if personal is not None:
            orders = personal.orders(personal.inputs(part, history_length), hits, engine.cfg)
            ranked[SYSTEMS[3]].extend(h.items[o][:kmax] for h, o in zip(hits, orders))
    truth = target_matrix(examples.column("item_idx").to_numpy(), n_items)
    rows = [{"system": s, **ranking_metrics(_padded(lists, kmax), truth, ks=SEARCH_KS)}
            for s, lists in ranked.items() if lists]
    return pd.DataFrame(rows).drop(columns=["users"], errors="ignore")


def target_matrix(targets: np.ndarray, n_items: int) -> sp.csr_matrix:
    """One relevant item per query, as ``ranking_metrics`` takes targets."""
    n = len(targets)
    return sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), np.asarray(targets, np.int64))),
                         shape=(n, n_items))


def load_search_systems(cfg: RayrecConfig) -> tuple[ReleaseManifest, ProductSearch, Personalizer | None]:
    """The latest (or ``serve.version``) release's manifest, search engine and personalizer."""
    release = load_release(resolve_release(release_root(cfg), cfg.serve.version))
    meta = release.manifest
    if meta.search is None:
        raise ArtifactError(f"{release.path}: built without search indexes; set search.enabled: true and run "
                            "`rayrec build-index`")
    engine = ProductSearch.load(release.layout.search, cfg.search, meta.n_items, meta.vocab_fingerprint)
    personal = None
    if cfg.search.personalize and meta.has_ranker:
        personal = Personalizer(release, cfg.ranker.purchase_weight,
                                ItemTrend.from_parquet(Path(cfg.preprocess.out_dir) / "events"))
    return meta, engine, personal


def has_search_events(processed: Path, split: str) -> bool:
    """Whether preprocessing found search events followed by a click in the split (a log may have none)."""
    folder = processed / "search"
    return folder.exists() and pads.dataset(folder).count_rows(filter=pads.field("split") == SPLITS[split]) > 0


def search_events(processed: Path, split: str) -> pa.Table:
    """The split's search events (query → item clicked next) from preprocessing; an error when none."""
    if not has_search_events(processed, split):
        raise ArtifactError(f"{processed / 'search'}: no {split} search events (the data has no search events "
                            "followed by a click in that split)")
    return pads.dataset(processed / "search").to_table(filter=pads.field("split") == SPLITS[split])


def run_search_evaluation(cfg: RayrecConfig, split: str = "test") -> tuple[pd.DataFrame, dict[str, Any]]:
    meta, engine, personal = load_search_systems(cfg)
    table = search_events(Path(cfg.preprocess.out_dir), split)
    df = evaluate_search(engine, personal, table, meta.n_items, meta.history_length)
    out = Path(cfg.evaluate.out_dir or Path(cfg.train.out_dir) / "report") / "search"
    c = cfg.search
    notes = (f"{cfg.name}: {table.num_rows:,} {split} search events (query → item clicked next in the session), "
             f"release {meta.version}; candidates: {c.lexical_candidates} lexical + {c.semantic_candidates} "
             f"semantic, fused by RRF (k={c.rrf_k:g}); personalization re-orders the hits within "
             f"{c.personal_min_relevance:g} of the best fused score, at most {c.personalize_depth} (ranker weight "
             f"{c.personal_weight:g}, k={c.personal_rrf_k:g}).")
    paths = write_report(df, out, title=f"Search evaluation ({cfg.name}, {split} split)", notes=notes,
                         chart_k=10)
    return df, {"paths": paths, "notes": notes, "queries": table.num_rows}
