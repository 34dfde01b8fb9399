"""Offline quality benchmark: every system on every dataset, in one run, on the same temporal split.

For the synthetic demo data and each real dataset in ../shared/datasets: preprocess, train the
two-tower model and the ranker with Ray Train, then score the baselines (most-popular,
recently-popular, item-kNN), the peer (`implicit` ALS and BPR) and rayrec's systems by full
ranking on the test split. Prints one table per dataset plus the ratio of rayrec's best system to
the best baseline on Recall@20 / NDCG@20, and writes benchmarks/results/quality.json.

    python benchmarks/quality.py [--datasets demo,movielens-100k,online-retail] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayrec.config import RayrecConfig, load_config
from rayrec.data.preprocess import run_preprocess
from rayrec.data.synthetic import generate
from rayrec.runtime import init_ray
from rayrec.train.offline import run_evaluation
from rayrec.train.trainer import load_context, run_training

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = {"demo": "demo.yaml", "movielens-100k": "movielens-100k.yaml", "online-retail": "online-retail.yaml"}
OURS = ("two_tower", "two_tower+ranker")
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


def run_dataset(name: str, quick: bool) -> dict:
    cfg = dataset_config(name, ["train.epochs=1", "train.ranker_epochs=1"] if quick else [])
    t0 = time.perf_counter()
    if cfg.generate is not None:
        generate(cfg.generate.out_dir, scale=cfg.generate.scale, seed=cfg.generate.seed)
    run_preprocess(cfg)
    ctx = load_context(cfg)
    retrieval = run_training(cfg, "two_tower", ctx)
    run_training(cfg, "ranker", ctx, retrieval_dir=retrieval.bundle)
    table, info = run_evaluation(cfg, ctx)
    return {"dataset": name, "seconds": time.perf_counter() - t0, "users": info["users"], "notes": info["notes"],
            "rows": table.to_dict(orient="records")}


def _best(rows: list[dict], ours: bool, metric: str) -> tuple[str, float]:
    pool = [r for r in rows if (r["system"] in OURS) == ours]
    best = max(pool, key=lambda r: r[metric])
    return best["system"], float(best[metric])


def print_dataset(result: dict) -> dict:
    rows = result["rows"]
    table = Table(title=f"{result['dataset']}: test split, {result['users']:,} users, full ranking")
    cols = ["recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "ndcg@50", "hit@20", "mrr",
            "coverage@20", "arp@20"]
    cols += [c for c in rows[0] if c.endswith("history)")]  # Recall/NDCG@20 of users with and without history
    table.add_column("system")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["system"], *(f"{r.get(c, float('nan')):.4f}" for c in cols))
    console.print(table)
    summary = {}
    for metric in ("recall@20", "ndcg@20"):
        ours_name, ours = _best(rows, True, metric)
        base_name, base = _best(rows, False, metric)
        summary[metric] = {"ours": ours_name, "ours_value": ours, "best_baseline": base_name,
                           "baseline_value": base, "ratio": ours / base if base else float("inf")}
        console.print(f"  {metric}: {ours_name} {ours:.4f} vs best baseline {base_name} {base:.4f} "
                      f"→ {summary[metric]['ratio']:.2f}×")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="one epoch per model: a smoke check, not a result")
    args = parser.parse_args()
    init_ray()
    results = []
    for name in args.datasets.split(","):
        console.rule(name)
        result = run_dataset(name, args.quick)
        result["summary"] = print_dataset(result)
        results.append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "quality.json"
    out.write_text(json.dumps({"quick": args.quick, "results": results}, indent=2, default=float))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
