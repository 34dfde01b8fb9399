"""`rayrec evaluate`: every system on the same temporal test split, in one run, one report.

Systems: the configured baselines (most-popular, recently-popular, item-kNN, and the `implicit`
library's ALS and BPR as the peer), the two-tower retrieval model alone, and retrieval followed by
the ranker over the top ``evaluate.candidates``. All are scored by full ranking over the catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rayrec.config import RayrecConfig
from rayrec.artifacts import load_ranker_model
from rayrec.models.ranker import Ranker
from rayrec.train.baselines import ImplicitALS, ImplicitBPR, ItemKNN, MostPopular, RecentlyPopular
from rayrec.train.evaluate import Recommender, evaluate, load_eval_split, write_report
from rayrec.train.loop import ModelContext, load_two_tower
from rayrec.train.systems import TwoStageRecommender, TwoTowerRecommender, two_stage_system

# Keys are the config's ``Baseline`` names, so an unknown one fails at config load.
BASELINES: dict[str, type] = {
    "most_popular": MostPopular, "recently_popular": RecentlyPopular, "item_knn": ItemKNN,
    "implicit_als": ImplicitALS, "implicit_bpr": ImplicitBPR,
}  # fmt: skip


def load_ranker(ctx: ModelContext, directory: Path) -> Ranker:
    return load_ranker_model(directory, ctx.items, ctx.vocab_fingerprint)


def trained_systems(ctx: ModelContext, models_dir: Path) -> list[Recommender]:
    systems: list[Recommender] = []
    retrieval_dir, ranker_dir = models_dir / "two_tower", models_dir / "ranker"
    if retrieval_dir.exists():
        retrieval = load_two_tower(ctx, retrieval_dir)
        systems.append(TwoTowerRecommender(retrieval))
        if ranker_dir.exists():
            systems.append(two_stage_system(retrieval, load_ranker(ctx, ranker_dir), ctx.cfg))
    return systems


def run_evaluation(cfg: RayrecConfig, ctx: ModelContext, split: str = "test") -> tuple[pd.DataFrame, dict[str, Any]]:
    e = cfg.evaluate
    data = load_eval_split(Path(cfg.preprocess.out_dir), split, ctx.manifest["history_length"], e.min_stage)
    systems = [BASELINES[name]() for name in e.baselines] + trained_systems(ctx, Path(cfg.train.out_dir))
    no_history = data.no_history
    table = evaluate(systems, data, ks=tuple(e.ks), exclude_seen=e.exclude_seen,
                     segments={"no history": no_history, "with history": ~no_history})
    out = Path(e.out_dir or Path(cfg.train.out_dir) / "report")
    notes = (f"{cfg.name}: full ranking over {data.n_items - 2:,} items, {len(data.users):,} {split} users "
             f"({int(no_history.sum()):,} with no history before the cutoff), "
             f"targets = distinct items at funnel stage >= {data.min_stage} in the {split} split, "
             f"items seen before the cutoff {'excluded' if e.exclude_seen else 'kept'}.")
    for system in systems:
        if isinstance(system, TwoStageRecommender):
            spec = system.ranker.spec
            notes += (f" The ranker's score adds {spec.trend_boost:g} × its trend feature (ranker.trend_boost) "
                      f"and {spec.collaborative_boost:g} × the ALS score of the user's history "
                      f"(ranker.collaborative_boost; null = chosen on validation after training).")
    paths = write_report(table, out, title=f"Offline evaluation ({cfg.name}, {split} split)", notes=notes)
    return table, {"paths": paths, "notes": notes, "users": len(data.users)}
