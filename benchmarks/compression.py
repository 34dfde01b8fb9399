"""Compression benchmark: the dense ranker vs structurally pruned (several ratios; the title inputs
removed) vs pruned + int8 vs unstructured-only, on quality (validation NDCG@20 / Recall@20 of
retrieval + ranker, scored on the half of the validation users disjoint from the half on which every
model, the dense one included, chose its boosts: ``pipeline.choosing_and_judging``), CPU scoring
latency (p50/p99 per request and per serving batch of 16 requests, 1 thread, all models timed in
turns, in the TorchScript form the ranking deployment serves and eagerly) and size, in one run per
dataset.

Reuses the models `benchmarks/quality.py` trained (benchmarks/results/quality/<dataset>/); run that
first. Every variant is fine-tuned for the same epochs from the same dense model, ``--seeds`` times
with different seeds (its quality is their mean, with the range: one run's noise is the size of the
1% criterion), and saved as a normal bundle. Prints a table per dataset, writes
benchmarks/results/compression.json and a quality-vs-latency PNG per dataset.

    python benchmarks/compression.py [--datasets demo,movielens-100k] [--finetune-epochs 1] [--seeds 3]
        [--variants "dense + same fine-tuning;structured 50%"]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from rich.console import Console
from rich.table import Table

from rayrec.compress.bundle import load_compressed_ranker
from rayrec.compress.measure import interleaved_latency
from rayrec.compress.pipeline import (
    choosing_and_judging,
    compress_ranker,
    fit_reference_boosts,
    measure_ranker,
    ranker_batches,
)
from rayrec.config import load_config, with_values
from rayrec.runtime import init_ray, set_threads
from rayrec.train.offline import load_ranker
from rayrec.train.trainer import load_context

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = {"demo": "demo.yaml", "movielens-100k": "movielens-100k.yaml", "online-retail": "online-retail.yaml"}
# name -> compress.* settings (structured ratios apply to deep units, cross rank and embedding dims)
VARIANTS: dict[str, dict[str, object]] = {
    "dense + same fine-tuning": {},  # separates the effect of the extra epoch from that of compression
    "structured 25%": {"deep": 0.25, "cross_rank": 0.25, "embedding_dim": 0.25},
    "structured 50%": {"deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.5},
    "structured 50%, labels only": {"deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.5, "distill": 0.0},
    "structured 75%": {"deep": 0.75, "cross_rank": 0.75, "embedding_dim": 0.75},
    "structured 50% + int8": {"deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.5, "quantize": True},
    "structured 50% + 50% sparse + int8": {"deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.5, "sparsity": 0.5,
                                           "quantize": True},
    # The title affinities' per-request work is ~15% of one request, more than half of what the widths save.
    "title inputs removed only": {"drop_title_affinity": True},
    "structured 50%, title inputs removed": {"deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.5,
                                             "drop_title_affinity": True},
    "structured 50%, title and leaf-price inputs removed": {"deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.5,
                                                            "drop_title_affinity": True, "drop_category_price": True},
    "unstructured 50% only": {"sparsity": 0.5},
    "int8 only": {"quantize": True},
}
LATENCY_ROUNDS = 400  # each model scores one request per round, in turns
# Requests the ranking deployment scores in one call when busy (its @serve.batch merges them; max 32).
SERVING_BATCH = 16
NEUTRAL = {"deep": 0.0, "cross_rank": 0.0, "embedding_dim": 0.0, "sparsity": 0.0, "quantize": False,
           "drop_title_affinity": False, "drop_category_price": False}
console = Console(width=200)


def run_dataset(name: str, finetune_epochs: int, seeds: int, variants: list[str]) -> list[dict]:
    work = RESULTS / "quality" / name
    models_dir = work / "runs"
    if not (models_dir / "ranker" / "meta.json").exists():
        raise SystemExit(f"{models_dir}: no trained ranker; run `python benchmarks/quality.py --datasets {name}` first")
    # ranker.cold_start=model: users without history are ranked by each variant too, not all answered
    # with the same trending list, which would shrink every variant's difference to the dense ranker.
    cfg = load_config(REPO / "configs" / CONFIGS[name], [f"preprocess.out_dir={work / 'processed'}",
                                                         f"train.out_dir={models_dir}", "train.eval_users=100000",
                                                         "ranker.cold_start=model"])
    choose, judge = choosing_and_judging(load_context(cfg))
    retrieval = models_dir / "two_tower"
    c = cfg.compress
    batches = ranker_batches(choose)
    set_threads(2)
    models = {"dense": load_ranker(choose, models_dir / "ranker")}
    # Every fine-tuned variant chooses its boosts on the choose half (cold_start=model, all its users);
    # the dense reference must too: its boost, chosen under training's settings, cost MovieLens's dense
    # ranker 8% of validation NDCG@20 here (0.3156 vs 0.3442 for the same ranker fine-tuned one epoch).
    fits = fit_reference_boosts(choose, retrieval, models["dense"], cfg.train.eval_users)
    for boost, fit in fits.items():
        by_boost = ", ".join(f"{b:g}: {m['valid_ndcg@20']:.4f}" for b, m in fit.items())
        console.log(f"{name}: dense {boost} chosen again: {getattr(models['dense'].spec, boost):g} "
                    f"(NDCG@20 {by_boost})")
    contexts = {"dense": judge}  # where each variant is scored
    runs: dict[str, list] = {"dense": [models["dense"]]}  # every fine-tuning seed's model
    for variant in variants:
        settings = VARIANTS[variant]
        runs[variant] = []
        for seed in range(seeds):
            vcfg = with_values(cfg, {**{f"compress.{k}": v for k, v in {
                **NEUTRAL, "distill": cfg.compress.distill, **settings, "finetune_epochs": finetune_epochs}.items()},
                "train.seed": cfg.train.seed + seed})
            vctx = dataclasses.replace(choose, cfg=vcfg)  # same data and validation users
            contexts.setdefault(variant, dataclasses.replace(judge, cfg=vcfg))
            console.log(f"{name}: {variant}, fine-tuning seed {seed}")
            folder = variant.replace(" ", "_").replace("%", "pct").replace("+", "plus").replace(",", "")
            # compress_ranker shrinks a copy and distills from a copy: the dense model stays as loaded
            bundle = compress_ranker(vctx, retrieval, models["dense"], batches,
                                     work / "compressed" / f"{folder}_seed{seed}", vcfg.compress)
            runs[variant].append(load_compressed_ranker(bundle, choose.items, choose.vocab_fingerprint))
        models[variant] = runs[variant][0]
    console.log(f"{name}: timing {len(models)} rankers in turns ({LATENCY_ROUNDS} rounds)")
    length = int(choose.manifest["history_length"])
    latency = interleaved_latency(models, c.latency_candidates, LATENCY_ROUNDS, threads=1, warmup=20,
                                  history_length=length)
    batched = interleaved_latency(models, c.latency_candidates, LATENCY_ROUNDS // 4, threads=1, warmup=5,
                                  history_length=length, requests=SERVING_BATCH)
    eager = interleaved_latency(models, c.latency_candidates, LATENCY_ROUNDS // 2, threads=1, warmup=10,
                                history_length=length, torchscript=False)
    rows = []
    for variant in models:
        costs = [measure_ranker(contexts[variant], retrieval, m, cfg.train.eval_users, c.latency_candidates,
                                latency=latency[variant]).flat() for m in runs[variant]]
        ndcgs = [cost["valid_ndcg@20"] for cost in costs]
        rows.append({"variant": variant, **costs[0], "valid_ndcg@20": float(np.mean(ndcgs)),
                     "valid_recall@20": float(np.mean([cost["valid_recall@20"] for cost in costs])),
                     "ndcg_runs": ndcgs, "batch_p50_ms": batched[variant]["p50_ms"],
                     "batch_p99_ms": batched[variant]["p99_ms"], "eager_p50_ms": eager[variant]["p50_ms"]})
    return rows


def print_table(name: str, rows: list[dict]) -> None:
    dense = rows[0]
    seeds = max(len(r["ndcg_runs"]) for r in rows)
    t = Table(title=f"{name}: ranker compression (validation, the judge half of its users, quality the mean of "
                    f"{seeds} fine-tuning seeds; CPU, 1 thread, 100 candidates per request, TorchScript as served "
                    f"unless 'eager'; one request and a serving batch of {SERVING_BATCH} per call, all models "
                    f"timed in turns)")
    for col in ("variant", "params", "nonzero", "size KB", "ndcg@20", "Δ ndcg", "seed range", "recall@20", "p50 ms",
                "p99 ms", "Δ p50", f"×{SERVING_BATCH} p50 ms", f"Δ ×{SERVING_BATCH}", "eager p50", "Δ eager",
                "Δ size", "Δ params"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    base = dense["valid_ndcg@20"]
    for r in rows:
        spread = f"{min(r['ndcg_runs']) / base - 1:+.1%}..{max(r['ndcg_runs']) / base - 1:+.1%}"
        t.add_row(r["variant"], f"{r['parameters']:,.0f}", f"{r['nonzero_parameters']:,.0f}",
                  f"{r['size_bytes'] / 1024:,.0f}", f"{r['valid_ndcg@20']:.4f}",
                  f"{r['valid_ndcg@20'] / base - 1:+.1%}", spread, f"{r['valid_recall@20']:.4f}",
                  f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['p50_ms'] / dense['p50_ms'] - 1:+.0%}",
                  f"{r['batch_p50_ms']:.2f}", f"{r['batch_p50_ms'] / dense['batch_p50_ms'] - 1:+.0%}",
                  f"{r['eager_p50_ms']:.2f}", f"{r['eager_p50_ms'] / dense['eager_p50_ms'] - 1:+.0%}",
                  f"{r['size_bytes'] / dense['size_bytes'] - 1:+.0%}",
                  f"{r['nonzero_parameters'] / dense['parameters'] - 1:+.0%}")
    console.print(t)


def plot(name: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    biggest = max(r["size_bytes"] for r in rows)
    for r in rows:
        ax.scatter(r["p50_ms"], r["valid_ndcg@20"], s=400 * r["size_bytes"] / biggest, alpha=0.6)
        ax.annotate(r["variant"], (r["p50_ms"], r["valid_ndcg@20"]), fontsize=7)
    ax.set_xlabel("p50 ms per request (100 candidates, CPU, 1 thread)")
    ax.set_ylabel("validation NDCG@20 (judge half of the users)")
    ax.set_title(f"{name}: ranker compression (area ∝ size)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="demo,movielens-100k")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per variant (quality: their mean)")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="names from VARIANTS, separated by ;")
    args = parser.parse_args()
    variants = args.variants.split(";")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    init_ray()
    results = {}
    for name in args.datasets.split(","):
        rows = run_dataset(name, args.finetune_epochs, args.seeds, variants)
        print_table(name, rows)
        plot(name, rows, RESULTS / f"compression_{name}.png")
        results[name] = rows
    (RESULTS / "compression.json").write_text(json.dumps({"finetune_epochs": args.finetune_epochs, "seeds": args.seeds,
                                                          "results": results}, indent=2))
    console.print(f"wrote {RESULTS / 'compression.json'}")


if __name__ == "__main__":
    main()
