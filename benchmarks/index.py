"""Item-index benchmark: exact inner-product search against the auto-chosen FAISS index (and the other kinds).

Owns the measurement: a synthetic catalog (default 1,000,000 items) of 64-d L2-normalised embeddings
that cluster the way trained item towers do (64 top categories, a few thousand sub-clusters of very
unequal sizes, items scattered around them), and user-like queries (noisy mixtures of 1-5 liked items,
mostly from one favourite category). Every index is built by ``rayrec.index.ann.build_item_index``
(tuned on one sample of users) and measured on a second, held-out sample: build seconds, serialized
size, recall@100 against exact search, batched queries/s with 1 and 2 FAISS threads (best of
``--repeats``), and two filtered workloads through ``ItemIndex.search``: the user's favourite category
only, and "not already bought" (the liked items and 100 of the user's exact top 300 excluded), with
recall against the exact filtered top 100. Prints a rich table, writes ``benchmarks/results/index.json``.

    .venv/bin/python benchmarks/index.py [--items 1000000] [--kinds auto,ivf_pq,hnsw] [--repeats 2]
    .venv/bin/python benchmarks/index.py --items 100000 --kinds auto      # quick try, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from rayrec.config import IndexConfig
from rayrec.index.ann import ItemIndex, build_item_index

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
K = 100
FP = "benchmark"
console = Console(width=None if sys.stdout.isatty() else 220)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_catalog(n: int, d: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """([n + 2, d] embeddings, [n + 2] top category); rows 0 and 1 are the reserved, all-zero ids."""
    rng = np.random.default_rng(seed)
    tops = unit(rng.standard_normal((64, d)))
    parent = rng.integers(0, len(tops), clusters)
    centres = unit(tops[parent] + 0.6 * unit(rng.standard_normal((clusters, d))))
    sizes = rng.lognormal(0.0, 1.0, clusters)  # a long tail of cluster sizes, like real categories
    members = rng.choice(clusters, n, p=sizes / sizes.sum())
    spread = rng.uniform(0.3, 0.7, clusters)  # some sub-clusters tight, some diffuse
    x = np.zeros((n + 2, d), np.float32)
    for start in range(0, n, 200_000):
        m = members[start: start + 200_000]
        noise = unit(rng.standard_normal((len(m), d)))
        x[start + 2: start + 2 + len(m)] = unit(centres[m] + spread[m, None] * noise)
    category = np.concatenate([[-1, -1], parent[members]])
    return x, category


def user_queries(items: np.ndarray, category: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries [n, d], liked item ids [n, 5] padded with -1): each user mixes 1-5 liked items, 80% of
    them from a favourite category, plus noise; the result sits between items, as user vectors do."""
    rng = np.random.default_rng(seed)
    by_category = {c: np.flatnonzero(category == c) for c in np.unique(category[2:])}
    keys = np.array(sorted(by_category))
    q = np.zeros((n, items.shape[1]), np.float32)
    liked = np.full((n, 5), -1, np.int64)
    for u in range(n):
        favourite = by_category[rng.choice(keys)]
        count = rng.integers(1, 6)
        picks = [rng.choice(favourite) if rng.random() < 0.8 else rng.integers(2, len(items)) for _ in range(count)]
        liked[u, :count] = picks
        q[u] = rng.dirichlet(np.ones(count)) @ items[picks]
    q += (0.3 / np.sqrt(items.shape[1])) * rng.standard_normal(q.shape).astype(np.float32)
    return unit(q), liked


def filter_masks(category: np.ndarray, liked: np.ndarray, near: np.ndarray, seed: int) -> dict[str, list[np.ndarray]]:
    """Two filtered workloads: the category of the user's first liked item only, and everything but
    already-bought items (the liked ones and 100 of the user's exact top 300)."""
    rng = np.random.default_rng(seed)
    cat, bought = [], []
    for row in range(len(liked)):
        cat.append(category == category[liked[row, 0]])
        m = np.ones(len(category), bool)
        m[liked[row][liked[row] >= 0]] = False
        m[rng.choice(near[row], 100, replace=False)] = False
        bought.append(m)
    return {"category": cat, "not bought": bought}


def best_qps(index: ItemIndex, q: np.ndarray, threads: int, repeats: int,
             masks: list[np.ndarray] | None = None) -> tuple[float, np.ndarray]:
    index.threads = threads
    best, ids = 0.0, np.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(q, K, masks)
        best = max(best, len(q) / (time.perf_counter() - start))
    return best, ids


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact)]))


def measure(name: str, index: ItemIndex, build_wall_s: float, q: np.ndarray, exact_ids: np.ndarray,
            filtered: dict[str, tuple[list[np.ndarray], np.ndarray]], n_filtered: int, repeats: int) -> dict[str, Any]:
    m = index.manifest
    row: dict[str, Any] = {"index": name, "kind": m.kind, "params": m.params, "build_wall_s": build_wall_s,
                           "build_s": m.build_s, "bytes": index.serialized_bytes(),
                           "manifest": {k: v for k, v in m.to_dict().items() if k != "index_sha256"}}
    for threads in (1, 2):
        qps, ids = best_qps(index, q, threads, repeats)
        row[f"qps_{threads}t"] = qps
        row["recall@100"] = recall(ids, exact_ids)
    for workload, (masks, exact) in filtered.items():
        qps, ids = best_qps(index, q[:n_filtered], 1, repeats, masks)
        assert (ids >= 2).all(), f"{name}/{workload}: a row came back short"  # the k-real-ids contract
        row[f"{workload} qps_1t"], row[f"{workload} recall@100"] = qps, recall(ids, exact)
    console.log(f"{name}: recall@100 {row['recall@100']:.4f}, {row['qps_1t']:,.0f} / {row['qps_2t']:,.0f} q/s "
                f"(1 / 2 threads)")
    return row


def print_table(rows: list[dict[str, Any]], n: int) -> None:
    exact = rows[0]
    t = Table(title=f"item index over {n:,} items, 64-d, k=100 (held-out user queries; filtered: 1 thread)")
    for col in ("index", "params", "build s", "size MB", "recall@100", "q/s 1T", "× exact 1T", "q/s 2T",
                "× exact 2T", "category q/s", "category R", "not-bought q/s", "not-bought R"):
        t.add_column(col, justify="left" if col in ("index", "params") else "right")
    for r in rows:
        t.add_row(r["index"], ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-",
                  f"{r['build_wall_s']:.1f}", f"{r['bytes'] / 2**20:,.0f}", f"{r['recall@100']:.4f}",
                  f"{r['qps_1t']:,.0f}", f"{r['qps_1t'] / exact['qps_1t']:.1f}×", f"{r['qps_2t']:,.0f}",
                  f"{r['qps_2t'] / exact['qps_2t']:.1f}×", f"{r['category qps_1t']:,.0f}",
                  f"{r['category recall@100']:.4f}", f"{r['not bought qps_1t']:,.0f}",
                  f"{r['not bought recall@100']:.4f}")
    console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=500, help="held-out queries (and as many for tuning)")
    parser.add_argument("--filtered-queries", type=int, default=200)
    parser.add_argument("--kinds", default="auto,ivf_pq,hnsw", help="auto and/or explicit kinds beside exact")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "index.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    with console.status(f"generating {args.items:,} items"):
        items, category = synthetic_catalog(args.items, args.dim, args.clusters, args.seed)
        tune_q, _ = user_queries(items, category, args.queries, args.seed + 1)
        q, liked = user_queries(items, category, args.queries, args.seed + 2)
    cfg = IndexConfig(threads=args.build_threads, recall_queries=args.queries, recall_k=K, seed=args.seed)

    def build(kind: str) -> tuple[ItemIndex, float]:
        start = time.perf_counter()
        index = build_item_index(items, cfg.model_copy(update={"kind": kind}), FP, tune_q,
                                 progress=lambda s: console.log(f"[{kind}] {s}"))
        return index, time.perf_counter() - start

    exact, exact_s = build("flat")
    exact.threads = args.build_threads
    nf = min(args.filtered_queries, len(q))
    _, exact_ids = exact.search(q, K)
    _, near = exact.search(q[:nf], 300)
    filtered = {}
    for workload, masks in filter_masks(category, liked[:nf], near, args.seed + 3).items():
        _, ids = exact.search(q[:nf], K, masks)  # flat: over-fetch of an exact search, else exact scoring
        filtered[workload] = (masks, ids)
    rows = [measure("exact (IndexFlatIP)", exact, exact_s, q, exact_ids, filtered, nf, args.repeats)]
    for kind in args.kinds.split(","):
        index, wall = build(kind)
        name = f"auto → {index.manifest.kind}" if kind == "auto" else f"{kind} (configured)"
        rows.append(measure(name, index, wall, q, exact_ids, filtered, nf, args.repeats))
        del index

    print_table(rows, args.items)
    auto = next((r for r in rows if r["index"].startswith("auto")), None)
    verdict = None
    if auto is not None:
        ratios = [auto[f"qps_{t}t"] / rows[0][f"qps_{t}t"] for t in (1, 2)]
        met = auto["recall@100"] >= 0.95 and min(ratios) >= 5
        verdict = {"recall@100": auto["recall@100"], "qps_ratio_1t": ratios[0], "qps_ratio_2t": ratios[1], "met": met}
        console.print(f"target (auto: recall@100 ≥ 0.95 at ≥ 5× exact q/s): {'met' if met else 'MISSED'} — "
                      f"recall {auto['recall@100']:.4f}, {ratios[0]:.1f}× (1 thread), {ratios[1]:.1f}× (2 threads)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": {"faiss": version("faiss-cpu"), "numpy": np.__version__, "cpus": os.cpu_count(),
                        "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0]},
        "target": verdict, "rows": rows,
    }, indent=2, default=float))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
