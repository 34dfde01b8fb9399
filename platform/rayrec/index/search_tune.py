"""`rayrec tune-search`: the fusion and personalization weights learned from a log's search events.

Searches the grid below on the validation split's search events (query → item clicked next) and
keeps the setting with the best NDCG@10 of fused + personalized search. Every query's lexical and
semantic candidates and the ranker's scores of all of them are computed once, so each grid point
only re-fuses and re-blends lists (seconds for the whole grid, where re-running the models per point
would take minutes). Writes the whole configuration with the chosen ``search`` section as a YAML that
``serve`` and ``evaluate --task search`` take as ``--config``, and a Markdown table of every point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from rayrec.artifacts import ArtifactError
from rayrec.config import RayrecConfig, SearchConfig, write_config
from rayrec.features.batches import without_history
from rayrec.index.search_eval import BATCH, _padded, load_search_systems, search_events, target_matrix
from rayrec.index.text_search import blend_personal, fuse, relevance_tier
from rayrec.metrics import ranking_metrics
from rayrec.train.evaluate import markdown_table

# Fusion depends on the two weights' ratio only, so lexical_weight stays as configured.
GRID: dict[str, tuple[float, ...]] = {
    "semantic_weight": (0.25, 0.5, 1.0, 2.0, 4.0),
    "personal_min_relevance": (0.5, 0.6, 0.7, 0.8, 0.9),
    "personal_weight": (1.0, 2.0, 4.0),
}
K = 10


@dataclass
class QueryCandidates:
    lexical: np.ndarray
    semantic: np.ndarray
    ranker: dict[int, float]  # item idx → ranker score, for every candidate of either list
    personal: bool  # the user has history (else the text order stands, as in Serve)
    target: int


def _score(queries: list[QueryCandidates], truth: sp.csr_matrix, search: SearchConfig) -> float:
    ranked = []
    for q in queries:
        hits = fuse(q.lexical, q.semantic, search)
        if q.personal and len(hits.items) > 1:
            scores = np.asarray([q.ranker[int(i)] for i in hits.items[: relevance_tier(hits, search)]])
            ranked.append(hits.items[blend_personal(hits, scores, search)][:K])
        else:
            ranked.append(hits.items[:K])
    return ranking_metrics(_padded(ranked, K), truth, ks=(K,))[f"ndcg@{K}"]


def collect_candidates(cfg: RayrecConfig, split: str) -> tuple[list[QueryCandidates], int]:
    """Each search event's candidate lists and the ranker's scores of their union."""
    meta, engine, personal = load_search_systems(cfg)
    if personal is None:
        raise ArtifactError("tune-search needs a release with a ranker and search.personalize: true")
    table = search_events(Path(cfg.preprocess.out_dir), split)
    out: list[QueryCandidates] = []
    for lo in range(0, table.num_rows, BATCH):
        part = table.slice(lo, BATCH)
        queries = [str(q) for q in part.column("query").to_pylist()]
        lexical, semantic = engine.candidate_lists(queries, [None] * len(queries))
        union = [np.unique(np.concatenate([a, b])) for a, b in zip(lexical, semantic)]
        batch = personal.inputs(part, meta.history_length)
        scores = personal.candidate_scores(batch, _padded(union, max((len(u) for u in union), default=1) or 1))
        has_history = ~without_history(batch["hist_items"])
        for i, target in enumerate(part.column("item_idx").to_pylist()):
            ranker = dict(zip(union[i].tolist(), scores[i, : len(union[i])].tolist()))
            out.append(QueryCandidates(lexical[i], semantic[i], ranker, bool(has_history[i]), int(target)))
    return out, meta.n_items


def tune_search_blend(cfg: RayrecConfig, split: str = "valid") -> tuple[pd.DataFrame, RayrecConfig, dict[str, Any]]:
    """Every grid point's NDCG@10 (best first), the config with the best point, and the output paths."""
    queries, n_items = collect_candidates(cfg, split)
    truth = target_matrix(np.asarray([q.target for q in queries]), n_items)
    rows = []
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values))
        rows.append({**point, "ndcg@10": _score(queries, truth, cfg.search.model_copy(update=point))})
    table = pd.DataFrame(rows).sort_values("ndcg@10", ascending=False, kind="stable").reset_index(drop=True)
    current = _score(queries, truth, cfg.search)
    chosen = cfg.model_copy(update={"search": cfg.search.model_copy(update=table.iloc[0][list(GRID)].to_dict())})
    out = Path(cfg.evaluate.out_dir or Path(cfg.train.out_dir) / "report") / "search"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"config": write_config(chosen, out / "search_tuned.yaml",
                                    f"search weights learned by `rayrec tune-search` on {len(queries):,} {split} "
                                    f"search events (NDCG@10 {table['ndcg@10'].iloc[0]:.4f}, configured "
                                    f"{current:.4f}); usable as --config for serve and evaluate"),
             "markdown": out / "search_tuning.md"}
    paths["markdown"].write_text(f"# Search weights ({cfg.name}, {split} split, {len(queries):,} searches)\n\n"
                                 f"Configured: NDCG@10 {current:.4f}.\n\n{markdown_table(table)}\n")
    return table, chosen, {"paths": paths, "queries": len(queries), "current": current}
