"""`rayrec evaluate`: every system on the same temporal test split, in one run, one report.

Systems: the configured baselines (most-popular, recently-popular, item-kNN, EASE, SASRec, and the
`implicit` library's ALS and BPR as the peer), the two-tower retrieval model alone, and retrieval
followed by the ranker over the top ``evaluate.candidates``. All are scored by full ranking over the
catalog, and users without history get one list for all of them (``train/cold_start.py``, among
``evaluate.cold_start_windows``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rayrec.config import RayrecConfig
from rayrec.artifacts import load_ranker_model
from rayrec.models.ranker import Ranker
from rayrec.train.baselines import BASELINES
from rayrec.train.cold_start import ColdStartChoice, choose_cold_start
from rayrec.train.evaluate import EvalSplit, Recommender, evaluate, load_eval_split, write_report
from rayrec.train.loop import ModelContext, load_two_tower
from rayrec.train.systems import TwoStageRecommender, TwoTowerRecommender, two_stage_system


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


def eval_split(cfg: RayrecConfig, ctx: ModelContext, split: str) -> EvalSplit:
    return load_eval_split(Path(cfg.preprocess.out_dir), split, ctx.manifest["history_length"], cfg.evaluate.min_stage)


def run_evaluation(cfg: RayrecConfig, ctx: ModelContext, split: str = "test",
                   baselines: list[Recommender] | None = None,
                   cold_start: ColdStartChoice | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every system on ``split``: ``baselines`` (default: the configured ones with their constructors'
    settings) and the trained models; users without history get one list for all systems, the
    ``cold_start`` policy (default: chosen on the validation split)."""
    e = cfg.evaluate
    data = eval_split(cfg, ctx, split)
    if cold_start is None:
        cold_start = choose_cold_start(eval_split(cfg, ctx, "valid") if split == "test" else data,
                                       e.cold_start_windows, e.exclude_seen)
    if baselines is None:
        baselines = [BASELINES[name]() for name in e.baselines]
    systems = [*baselines, *trained_systems(ctx, Path(cfg.train.out_dir))]
    no_history = data.no_history
    table = evaluate(systems, data, ks=tuple(e.ks), exclude_seen=e.exclude_seen,
                     segments={"no history": no_history, "with history": ~no_history},
                     cold_start=cold_start.system())
    out = Path(e.out_dir or Path(cfg.train.out_dir) / "report")
    notes = (f"{cfg.name}: full ranking over {data.n_items - 2:,} items, {len(data.users):,} {split} users "
             f"({int(no_history.sum()):,} with no history before the cutoff), "
             f"targets = distinct items at funnel stage >= {data.min_stage} in the {split} split, "
             f"items seen before the cutoff {'excluded' if e.exclude_seen else 'kept'}; users without history "
             f"get one list for every system: {cold_start.describe()} (chosen on validation).")
    for system in systems:
        if isinstance(system, TwoStageRecommender):
            spec = system.ranker.spec
            notes += (f" The ranker's score adds {spec.trend_boost:g} × its trend feature (ranker.trend_boost) "
                      f"and {spec.collaborative_boost:g} × the ALS score of the user's history "
                      f"(ranker.collaborative_boost; null = chosen on validation after training).")
    paths = write_report(table, out, title=f"Offline evaluation ({cfg.name}, {split} split)", notes=notes)
    return table, {"paths": paths, "notes": notes, "users": len(data.users), "cold_users": int(no_history.sum()),
                   "cold_mask": no_history, "cold_start": {"window_days": cold_start.window_days, "valid_ndcg@20": cold_start.valid_ndcg}}
