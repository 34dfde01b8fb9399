"""Offline quality benchmark: every system on every dataset, in one run, on the same temporal split.

For the synthetic demo data and each real dataset in ../shared/datasets: preprocess, train the
two-tower model and the ranker with Ray Train, then score the baselines (most-popular,
recently-popular, item-kNN), the peer (`implicit` ALS and BPR) and rayrec's systems by full
ranking on the test split. Prints one table per dataset plus the ratio of the two-stage system
(``HEADLINE``) to the best baseline on Recall@20 / NDCG@20, and writes benchmarks/results/quality.json.
``--seeds`` trains rayrec's models once per training seed and quotes the ratio of their mean (one
draw of the demo's models moves its NDCG@20 by several percent). ``--refit`` adds rayrec's models
refit on train + valid (the baselines are fitted on everything before the test cutoff; rayrec's
models on the train split, where their settings are chosen).

    python benchmarks/quality.py [--datasets demo,movielens-100k,online-retail] [--seeds 0,1,2] [--quick] [--refit]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from rayrec.artifacts import read_meta
from rayrec.config import RayrecConfig, load_config
from rayrec.data.preprocess import run_preprocess
from rayrec.data.synthetic import generate
from rayrec.metrics import paired_ratio_interval
from rayrec.runtime import init_ray
from rayrec.train.loop import ModelContext
from rayrec.train.offline import run_evaluation
from rayrec.train.systems import BOOST_GRIDS
from rayrec.train.trainer import load_context, run_training

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = {"demo": "demo.yaml", "movielens-100k": "movielens-100k.yaml", "online-retail": "online-retail.yaml"}
OURS = ("two_tower", "two_tower+ranker")
REFIT = " (train+valid)"
HEADLINE = "two_tower+ranker"  # the one system the ratio is quoted for, fixed before the run
METRICS = ("recall@20", "ndcg@20")  # the ratio's metrics (evaluate keeps their per-user values)
console = Console(width=180)


def dataset_config(name: str, extra: list[str] | None = None) -> RayrecConfig:
    """The dataset's config with every output (and a synthetic dataset's raw data) under its run folder."""
    work = RESULTS / "quality" / name
    overrides = [f"preprocess.out_dir={work / 'processed'}", f"train.out_dir={work / 'runs'}",
                 f"evaluate.out_dir={work / 'report'}", f"serve.release_dir={work / 'serving'}", *(extra or [])]
    cfg = load_config(REPO / "configs" / CONFIGS[name], overrides)
    if cfg.generate is not None:
        cfg = load_config(REPO / "configs" / CONFIGS[name], [*overrides, f"generate.out_dir={work / 'raw'}",
                                                              f"source.events={work / 'raw' / 'events'}",
                                                              f"source.catalog={work / 'raw' / 'catalog.csv'}"])
    return cfg


def _train_both(cfg: RayrecConfig) -> tuple[ModelContext, Path]:
    """Both models under ``cfg.train.out_dir``; returns the context and the ranker's bundle."""
    ctx = load_context(cfg)
    retrieval = run_training(cfg, "two_tower", ctx)
    return ctx, run_training(cfg, "ranker", ctx, retrieval_dir=retrieval.bundle).bundle


def _seed_dirs(work: Path, seed: int) -> list[str]:
    """Seed 0 trains under runs/ (the single-seed layout); another seed under runs_seed<N>/."""
    if seed == 0:
        return []
    return [f"train.out_dir={work / f'runs_seed{seed}'}", f"evaluate.out_dir={work / f'report_seed{seed}'}"]


def run_dataset(name: str, quick: bool, refit: bool, seeds: list[int]) -> dict:
    """Preprocess once, then per training seed train both models and score them on the test split; the
    baselines (no training seed) are scored with the first seed's run only."""
    epochs = ["train.epochs=1", "train.ranker_epochs=1"] if quick else []
    cfg = dataset_config(name, epochs)
    work = Path(cfg.train.out_dir).parent
    t0 = time.perf_counter()
    if cfg.generate is not None:
        generate(cfg.generate.out_dir, scale=cfg.generate.scale, seed=cfg.generate.seed)
    run_preprocess(cfg)
    tables, boosts, ours_per_user = [], {}, []
    for i, seed in enumerate(seeds):
        seed_cfg = dataset_config(name, [*epochs, f"train.seed={seed}", *_seed_dirs(work, seed),
                                         *([] if i == 0 else ["evaluate.baselines=[]"])])
        ctx, ranker = _train_both(seed_cfg)
        table, info = run_evaluation(seed_cfg, ctx)
        table["seed"] = [seed if _is_ours(system) else None for system in table["system"]]
        tables.append(table)
        ours_per_user.append(table.attrs["per_user"][HEADLINE])
        spec = read_meta(ranker)["spec"]
        boosts[seed] = {name: spec.get(name, 0.0) for name in BOOST_GRIDS}
    intervals = {}
    for metric in METRICS:  # paired over test users: the seeds' mean per user vs the best baseline's
        base_name, _ = _best_baseline(tables[0].to_dict(orient="records"), metric)
        ours = np.mean([u[metric] for u in ours_per_user], axis=0)
        intervals[metric] = paired_ratio_interval(ours, tables[0].attrs["per_user"][base_name][metric])
    table = pd.concat(tables, ignore_index=True)
    if refit:  # the same settings (epochs, the boosts chosen on validation), learning from valid too
        chosen = [f"ranker.{k}={v}" for k, v in boosts[seeds[0]].items()]
        refit_cfg = dataset_config(name, [*epochs, f"train.seed={seeds[0]}", "train.include_valid=true",
                                          *chosen, f"train.out_dir={work / 'runs_refit'}",
                                          "evaluate.baselines=[]", f"evaluate.out_dir={work / 'report_refit'}"])
        refit_ctx, _ = _train_both(refit_cfg)
        refit_table, _ = run_evaluation(refit_cfg, refit_ctx)
        refit_table["system"] = refit_table["system"] + REFIT
        refit_table["seed"] = seeds[0]
        table = pd.concat([table, refit_table], ignore_index=True)
    return {"dataset": name, "seconds": time.perf_counter() - t0, "users": info["users"], "notes": info["notes"],
            "seeds": seeds, "boosts": boosts, "ratio_interval_90": intervals,
            "rows": table.to_dict(orient="records")}


def _is_ours(system: str) -> bool:
    return system in OURS or system.endswith(REFIT)


def _best_baseline(rows: list[dict], metric: str) -> tuple[str, float]:
    best = max((r for r in rows if not _is_ours(r["system"])), key=lambda r: r[metric])
    return best["system"], float(best[metric])


def print_dataset(result: dict) -> dict:
    rows, seeds = result["rows"], result["seeds"]
    table = Table(title=f"{result['dataset']}: test split, {result['users']:,} users, full ranking")
    cols = ["recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "ndcg@50", "hit@20", "mrr",
            "coverage@20", "arp@20"]
    cols += [c for c in rows[0] if c.endswith("history)")]  # Recall/NDCG@20 of users with and without history
    table.add_column("system")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        label = r["system"] + (f" (seed {int(r['seed'])})" if len(seeds) > 1 and _is_ours(r["system"]) else "")
        table.add_row(label, *(f"{r.get(c, float('nan')):.4f}" for c in cols))
    console.print(table)
    summary = {}
    for metric in METRICS:
        per_seed = [float(r[metric]) for r in rows if r["system"] == HEADLINE]
        ours = float(np.mean(per_seed))
        base_name, base = _best_baseline(rows, metric)
        ratios = [v / base if base else float("inf") for v in per_seed]
        summary[metric] = {"ours": HEADLINE, "ours_value": ours, "best_baseline": base_name, "baseline_value": base,
                           "ratio": ours / base if base else float("inf"), "ours_per_seed": per_seed,
                           "ratio_per_seed": ratios, "ratio_interval_90": result["ratio_interval_90"][metric]}
        lo, hi = result["ratio_interval_90"][metric]
        spread = (f"; mean of {len(seeds)} training seeds, per seed "
                  f"{', '.join(f'{x:.2f}×' for x in ratios)}" if len(seeds) > 1 else "")
        console.print(f"  {metric}: {HEADLINE} {ours:.4f} vs best baseline {base_name} {base:.4f} "
                      f"→ {summary[metric]['ratio']:.2f}× (90% interval over test users {lo:.2f}–{hi:.2f}{spread})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="one epoch per model: a smoke check, not a result")
    parser.add_argument("--seeds", default="0", help="training seeds (train.seed), comma-separated: each trains and "
                        "scores both models again; the ratio is quoted for their mean, with each seed's beside it")
    parser.add_argument("--refit", action="store_true", help="also refit both models on train + valid "
                        "(train.include_valid, the boost chosen on validation) and score them: rows '(train+valid)'")
    args = parser.parse_args()
    init_ray()
    results = []
    for name in args.datasets.split(","):
        console.rule(name)
        result = run_dataset(name, args.quick, args.refit, [int(x) for x in args.seeds.split(",")])
        result["summary"] = print_dataset(result)
        results.append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "quality.json"
    out.write_text(json.dumps({"quick": args.quick, "refit": args.refit, "seeds": args.seeds, "results": results}, indent=2, default=float))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
