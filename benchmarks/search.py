"""Search quality benchmark: lexical, semantic, fused and fused + personalized search, in one run, on
the synthetic demo data and on UCI Online Retail, with the release that would serve them.

Queries:
- demo: the generator's own search events (a query, then the item clicked next in the session),
  temporal test split.
- online-retail and movielens-100k (``--datasets``): no searches were logged, so queries are derived from the test split's
  purchases: ``--query-words`` words (default 1; three letters or more) of the bought item's
  description, drawn at random and kept in their order ("WHITE HANGING HEART T-LIGHT HOLDER" →
  "holder", or "hanging holder" with 2), as a shopper half-remembering a product would type. The
  history is the customer's purchases before that one. Deriving the query from the target's own
  text favours lexical retrieval (two words nearly name the item: lexical alone reaches NDCG@10
  0.77); with one word, personalization has to pick the bought item among all items sharing it.
  MovieLens the same way from movie titles ("Toy Story (1995)" → "toy" or "story"; years and a few
  stopwords are never a query), on test-split ratings.

Models come from benchmarks/quality.py's run folder per dataset (trained there when missing, or
always with --retrain). Prints a table per dataset and the ratio of fused + personalized NDCG@10 to
the best single retriever's (target ≥ 1.10), and writes benchmarks/results/search.json.

    python benchmarks/search.py [--datasets demo,online-retail] [--retrain] [--max-queries 3000]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from rayrec.config import load_config
from rayrec.index.build import build_release
from rayrec.index.search_eval import SEARCH_KS, SPLITS, evaluate_search, load_search_systems, search_events
from rayrec.runtime import init_ray
from rayrec.train.evaluate import write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
console = Console(width=160)
TARGET = 1.10
STOPWORDS = frozenset({"the", "and", "for", "with", "from", "les", "des"})  # never a whole query by themselves


def derived_queries(processed: Path, max_queries: int, n_words: int, split: str = "test", seed: int = 0) -> pa.Table:
    """A split's purchases with a query made of ``n_words`` words of the bought item's description."""
    events = pads.dataset(processed / "events").to_table(filter=pads.field("split") == SPLITS[split])
    items = pq.read_table(processed / "items.parquet", columns=["item_idx", "title"]).to_pylist()
    words = {r["item_idx"]: [w for w in re.findall(r"[a-z]{3,}", str(r["title"]).lower()) if w not in STOPWORDS]
             for r in items}
    rng = np.random.default_rng(seed)
    rows = rng.permutation(events.num_rows)[:max_queries]
    events = events.take(np.sort(rows))
    queries, keep = [], []
    for i, item in enumerate(events.column("item_idx").to_pylist()):
        w = words.get(item) or []
        if not w:
            continue
        picked = np.sort(rng.choice(len(w), size=min(n_words, len(w)), replace=False))
        queries.append(" ".join(w[j] for j in picked))
        keep.append(i)
    return events.take(keep).append_column("query", pa.array(queries, pa.string()))


def run_dataset(name: str, retrain: bool, max_queries: int, query_words: int) -> dict:
    from quality import dataset_config, run_dataset as train_and_evaluate  # quality.py owns the trained runs

    cfg = dataset_config(name)
    t0 = time.perf_counter()
    if retrain or not (Path(cfg.train.out_dir) / "ranker" / "meta.json").is_file():
        console.print(f"[bold]{name}[/]: training (benchmarks/quality.py's pipeline)")
        train_and_evaluate(name, quick=False)
    release = build_release(cfg, progress=lambda msg: console.print(f"  {msg}"))
    meta, engine, personal = load_search_systems(cfg)
    processed = Path(cfg.preprocess.out_dir)
    if (processed / "search").is_dir() and pads.dataset(processed / "search").count_rows() > 0:
        examples = search_events(processed, "test")
        how = "the log's search events (query → item clicked next), test split"
    else:
        examples = derived_queries(processed, max_queries, query_words)
        how = f"derived: {query_words} word(s) of the target item's title, test-split interactions"
    df = evaluate_search(engine, personal, examples, meta.n_items, meta.history_length)
    write_report(df, RESULTS / "search" / name, title=f"Search evaluation ({name}, test split)", notes=how,
                 chart_k=10)
    rows = df.to_dict(orient="records")
    by = {r["system"]: r for r in rows}
    best_single = max(("lexical", "semantic"), key=lambda s: by[s]["ndcg@10"])
    ratio = by["fused+personalized"]["ndcg@10"] / max(by[best_single]["ndcg@10"], 1e-12)
    return {"dataset": name, "queries": examples.num_rows, "how": how, "release": release.name,
            "seconds": time.perf_counter() - t0, "rows": rows, "best_single": best_single, "ratio": ratio}


def print_result(r: dict) -> None:
    columns = [f"recall@{k}" for k in SEARCH_KS] + [f"ndcg@{k}" for k in SEARCH_KS] + ["mrr"]
    table = Table(title=f"{r['dataset']}: {r['queries']:,} queries ({r['how']})")
    table.add_column("system")
    for c in columns:
        table.add_column(c, justify="right")
    for row in r["rows"]:
        table.add_row(row["system"], *(f"{row[c]:.4f}" for c in columns))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="demo,online-retail")
    parser.add_argument("--retrain", action="store_true", help="Train even when quality.py's models exist.")
    parser.add_argument("--max-queries", type=int, default=3000, help="Derived queries per real dataset.")
    parser.add_argument("--query-words", type=int, default=1, help="Words per derived query.")
    args = parser.parse_args()
    init_ray(load_config(None).ray)
    results = [run_dataset(name, args.retrain, args.max_queries, args.query_words) for name in args.datasets.split(",")]
    for r in results:
        print_result(r)
    summary = Table(title=f"fused + personalized vs the best single retriever, NDCG@10 (target ≥ {TARGET:.2f}×)")
    for c in ("dataset", "queries", "best single", "its ndcg@10", "fused+personalized", "ratio", "target"):
        summary.add_column(c, justify="left" if c == "dataset" else "right")
    for r in results:
        by = {row["system"]: row for row in r["rows"]}
        summary.add_row(r["dataset"], f"{r['queries']:,}", r["best_single"], f"{by[r['best_single']]['ndcg@10']:.4f}",
                        f"{by['fused+personalized']['ndcg@10']:.4f}", f"{r['ratio']:.3f}×",
                        "met" if r["ratio"] >= TARGET else "missed")
    console.print(summary)
    out = RESULTS / "search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target_ratio": TARGET, "results": results}, indent=2, default=float))
    console.print(f"wrote {out} and per-dataset reports under {RESULTS / 'search'}")


if __name__ == "__main__":
    main()
