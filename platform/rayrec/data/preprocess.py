"""`rayrec preprocess`: raw logs to training data with Ray Data, streaming, with a manifest that adds up.

Walk of a log row: ``sources`` reads it (one Ray task per file) → ``EventValidator`` types it or
gives it a reason (→ ``rejects/``) → grouped by user bucket, exact repeats go to ``duplicates/`` →
the temporal split's cutoffs → iterative k-core on the training period (``kcore``) drops sparse
users and items from every period (→ ``filtered/``, with the round and reason) → vocabularies and
per-user examples (``examples.build_user_examples``) → Parquet + ``manifest.json``, which
``manifest_check`` then recounts from the files written.

The pure steps that define the outputs (loading, validation, cutoffs, vocabularies, the item table,
the counts) are public so the pandas baseline of ``benchmarks/preprocess.py`` applies them too.

The driver only ever holds vocabulary-sized data (counts per user/item, the catalog, a fixed-size
time histogram); event rows stay in Ray's object store and on disk.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.config import RayrecConfig
from rayrec.data import sources
from rayrec.data.examples import (SPLIT_NAMES, USER_BUCKET, ExampleSpec, build_user_examples, mark_duplicates,
                                  split_of, user_bucket)
from rayrec.data.kcore import (KCORE_PERIOD, KCORE_ROUND, KcoreRemovals, count_keys, iterate_kcore, round_stats,
                               sum_counts, tag_removed, train_counts)
from rayrec.data.manifest_check import check_manifest
from rayrec.data.ordered_parquet import write_ordered_parquet
from rayrec.data.validate import REASON_CODE, EventValidator, validate_catalog
from rayrec.features.transforms import category_prefixes, price_bucket, price_bucket_edges, tokenize
from rayrec.features.vocab import Vocabulary, encode_token_lists, vocab_set_fingerprint
from rayrec.schema import INTERACTION_TYPES, REASON, SCHEMA_VERSION, SOURCE_FILE, SOURCE_ROW

StageCallback = Callable[[str], None]
HISTOGRAM_BINS = 1 << 16
VOCAB_NAMES = ("users", "items", "categories", "brands", "tokens")


class PreprocessError(RuntimeError):
    """A problem with the input that stops preprocessing, worded for the person who runs it."""


@dataclass
class FileReport:
    read: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)


# ---- Ray Data UDFs (module-level so they pickle by reference) -------------------------------


def _read_event_files(batch: dict[str, np.ndarray], source: Any) -> Iterator[pa.Table]:
    for path in batch["path"]:
        yield from sources.read_event_file(str(path), source)


def _rejected(df: pd.DataFrame) -> pd.DataFrame:
    return df[df[REASON].notna()]


def _valid_with_bucket(df: pd.DataFrame, buckets: int) -> pd.DataFrame:
    df = df[df[REASON].isna()].drop(columns=[REASON, REASON_CODE])
    return df.assign(**{USER_BUCKET: user_bucket(df["user_id"], buckets)})


def _rows_where(df: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    return df[df[column] == value]


KCORE_TAGS = [KCORE_ROUND, REASON_CODE, REASON]


def _kept_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df[KCORE_ROUND] == 0].drop(columns=KCORE_TAGS)


def _filtered_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df[KCORE_ROUND] > 0].drop(columns=[USER_BUCKET, "is_duplicate"])


def ts_histogram(df: pd.DataFrame, lo: float, hi: float) -> np.ndarray:
    """Interaction timestamps in ``HISTOGRAM_BINS`` bins over [lo, hi): additive over blocks."""
    ts = df.loc[df["event_type"].isin(INTERACTION_TYPES), "ts_ms"].to_numpy(np.float64)
    return np.histogram(ts, bins=HISTOGRAM_BINS, range=(lo, hi))[0]


def _ts_histogram_row(df: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    return pd.DataFrame({"counts": [ts_histogram(df, lo, hi)]})


def histogram_range(ts_min: float, ts_max: float) -> tuple[float, float]:
    """The histogram's [lo, hi): every event's timestamp, the latest one included."""
    return float(ts_min), float(ts_max) + 1


def split_cutoffs(counts: np.ndarray, lo: float, hi: float, cfg: RayrecConfig) -> tuple[int, int]:
    """(train end, valid end) in ms: the bins' upper edges where the latest valid + test and the
    latest test fractions of interactions begin."""
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    p = cfg.preprocess
    # A cutoff is a bin's upper edge: everything before it is earlier in time, so no leakage.
    t1 = edges[np.searchsorted(cum, 1 - p.valid_fraction - p.test_fraction) + 1]
    t2 = edges[np.searchsorted(cum, 1 - p.test_fraction) + 1]
    return int(np.ceil(t1)), int(np.ceil(max(t2, t1 + 1)))


def search_tokens(df: pd.DataFrame) -> pd.DataFrame:
    """The sorted distinct query tokens of the search events in ``df``, as a ``token`` column."""
    queries = df.loc[df["event_type"] == "search", "query"]
    tokens = sorted({t for q in queries for t in tokenize(q)})
    return pd.DataFrame({"token": tokens})


SEARCH_EVENT_COLUMNS = ("user_id", "ts_ms", "split", "session_id", "query", SOURCE_FILE, SOURCE_ROW)


def search_event_rows(df: pd.DataFrame, cutoffs_ms: tuple[int, int]) -> pd.DataFrame:
    """The kept search events with their split (``search_events/``): with ``events/`` they are the kept rows."""
    searches = df[df["event_type"] == "search"]
    return searches.assign(split=split_of(searches["ts_ms"].to_numpy(np.int64), cutoffs_ms))[list(SEARCH_EVENT_COLUMNS)]


BUCKET_ROW = "bucket_row"


def _bucket_examples(df: pd.DataFrame, spec: ExampleSpec) -> pa.Table:
    """One bucket's examples with their place in the canonical order: (bucket, row as built)."""
    table = build_user_examples(df, spec)
    n = table.num_rows
    return (table.append_column(USER_BUCKET, pa.array(np.full(n, df[USER_BUCKET].iloc[0], np.int32)))
            .append_column(BUCKET_ROW, pa.array(np.arange(n, dtype=np.int32))))


def _drop_kind_columns(df: pd.DataFrame, kind: str, keep: tuple[str, ...]) -> pd.DataFrame:
    return df.loc[df["kind"] == kind, list(keep)]


EVENT_OUTPUT = ("user_idx", "item_idx", "ts_ms", "split", "stage", "session_id",
                "hist_items", "hist_types", "hist_gaps_s")  # fmt: skip
OUTPUTS: dict[str, tuple[str, ...]] = {
    "event": EVENT_OUTPUT,
    "ranking": (*EVENT_OUTPUT, "label_click", "label_cart", "label_purchase", "negative"),
    "search": (*EVENT_OUTPUT, "query", "query_tokens"),
}
OUTPUT_DIRS = {"event": "events", "ranking": "ranking", "search": "search"}


# ---- driver-side steps -----------------------------------------------------------------------


def check_files(cfg: RayrecConfig) -> FileReport:
    """The event files to read; empty ones are listed apart, bad ones stop the run or are skipped."""
    report = FileReport()
    for path in sources.event_files(cfg.source):
        problem = sources.check_file(path)
        if problem is None:
            report.read.append(path)
        elif problem.startswith("empty file"):
            report.empty.append(path)
        elif cfg.source.on_bad_file == "skip":
            report.bad.append({"path": path, "error": problem})
        else:
            raise PreprocessError(f"{path}: {problem}. Fix or remove the file, or set "
                                  "source.on_bad_file=skip to skip it and name it in the manifest.")
    if not report.read:
        raise PreprocessError(f"no readable event files under {cfg.source.events!r}")
    return report


def load_catalog(cfg: RayrecConfig, out: Path) -> tuple[pd.DataFrame | None, dict[str, int]]:
    """The valid catalog (None without one) and its counts; rejected rows go to ``rejects_catalog.parquet``."""
    paths = sources.catalog_files(cfg.source)
    if not paths:
        return None, {"rows_read": 0, "rejected": 0, "kept": 0}
    # Catalog-sized (one row per item): read in the driver, which saves a Ray job's start-up.
    raw = pa.concat_tables([t for p in paths for t in sources.read_catalog_file(p, cfg.source)]).to_pandas()
    valid, rejected = validate_catalog(raw)
    if len(rejected):
        rejected.to_parquet(out / "rejects_catalog.parquet", index=False)
    return valid, {"rows_read": len(raw), "rejected": len(rejected), "kept": len(valid)}


def event_validator(cfg: RayrecConfig, catalog: pd.DataFrame | None) -> EventValidator:
    """The validator of this run's events: the catalog's items are the known ones when required."""
    known = frozenset(catalog["item_id"]) if catalog is not None and cfg.validate_.require_known_items else None
    return EventValidator(
        known_items=known,
        now_ms=(time.time() + cfg.validate_.max_future_skew_s) * 1000.0,
        min_ms=pd.Timestamp(cfg.validate_.min_timestamp, tz="UTC").value / 1e6,
    )


def _grouped_counts(ds: Any, column: str) -> dict[str, int]:
    """Rows per value of ``column`` (str keys), counted from the dataset's own rows."""
    if ds.count() == 0:
        return {}
    counts = ds.groupby(column).count().to_pandas()
    return {str(k): int(v) for k, v in zip(counts[column], counts["count()"])}


def _kcore(data: Any, train_end_ms: int, cfg: RayrecConfig, on_stage: StageCallback) -> tuple[Any, list[dict[str, int]]]:
    """The training-period k-core (``kcore``); returns (every row tagged with its round, per-round stats)."""
    p = cfg.preprocess

    def count(removals: KcoreRemovals) -> pd.DataFrame:
        parts = data.map_batches(train_counts, batch_format="pandas",
                                 fn_kwargs={"train_end_ms": train_end_ms, "removals": removals}).to_pandas()
        return sum_counts(parts)

    removals, stats = iterate_kcore(count, p.min_user_events, p.min_item_events, p.max_kcore_rounds, on_stage)
    tagged = data.map_batches(tag_removed, batch_format="pandas", fn_kwargs={
        "removals": removals, "min_user_events": p.min_user_events, "min_item_events": p.min_item_events,
    }).materialize()  # fmt: skip
    return tagged, stats


def _time_cutoffs(data: Any, cfg: RayrecConfig) -> tuple[int, int]:
    from ray.data.aggregate import Max, Min

    stats = data.aggregate(Min("ts_ms"), Max("ts_ms"))
    lo, hi = histogram_range(stats["min(ts_ms)"], stats["max(ts_ms)"])
    hists = data.map_batches(_ts_histogram_row, batch_format="pandas", fn_kwargs={"lo": lo, "hi": hi}).to_pandas()
    return split_cutoffs(np.sum(np.stack(hists["counts"].to_numpy()), axis=0), lo, hi, cfg)


def build_vocabs(catalog: pd.DataFrame, counts: pd.DataFrame, tokens: list[str],
                 base: Path | None) -> dict[str, Vocabulary]:
    """Vocabularies of the kept users (``counts``), the catalog and the tokens; ``base`` keeps an earlier run's ids."""
    built = {
        "users": Vocabulary.build("users", counts.loc[counts.kind == "user", "key"]),
        "items": Vocabulary.build("items", catalog["item_id"]),
        "categories": Vocabulary.build("categories", (p for c in catalog["category"] for p in category_prefixes(c))),
        "brands": Vocabulary.build("brands", catalog["brand"]),
        "tokens": Vocabulary.build("tokens", [*tokens, *(t for title in catalog["title"] for t in tokenize(title))]),
    }  # fmt: skip
    if base is None:
        return built
    return {name: Vocabulary.load(base, name).extend(v.values[2:]) for name, v in built.items()}


def item_table(catalog: pd.DataFrame, vocabs: dict[str, Vocabulary], cfg: RayrecConfig,
               popularity: pd.Series) -> tuple[pa.Table, list[float]]:
    """``items.parquet`` (``popularity``: train interactions per item_idx) and the price bucket edges."""
    p = cfg.preprocess
    prices = catalog["price"].to_numpy(np.float64)
    edges = price_bucket_edges(prices, p.price_buckets)
    prefixes = [prefix for c in catalog["category"] for prefix in category_prefixes(c)]
    cats = vocabs["categories"].encode(prefixes).reshape(len(catalog), -1)
    titles = encode_token_lists(vocabs["tokens"], [tokenize(t)[: p.title_tokens] for t in catalog["title"]])
    item_idx = vocabs["items"].encode(catalog["item_id"])
    table = pa.table({
        "item_idx": item_idx, "item_id": catalog["item_id"].astype(str), "title": catalog["title"].astype(str),
        "category": catalog["category"].astype(str), "brand": catalog["brand"].astype(str),
        "cat1_idx": cats[:, 0], "cat2_idx": cats[:, 1], "cat3_idx": cats[:, 2],
        "brand_idx": vocabs["brands"].encode(catalog["brand"]), "price": prices,
        "price_bucket": price_bucket(prices, edges), "title_tokens": titles,
        "train_interactions": popularity.reindex(item_idx, fill_value=0).to_numpy(np.int64),
    }).sort_by("item_idx")  # fmt: skip
    return table, edges.tolist()


def derived_catalog(counts: pd.DataFrame) -> pd.DataFrame:
    """A catalog of bare ids for logs without one: the items of ``counts``."""
    items = counts.loc[counts.kind == "item", "key"].astype(str)
    return pd.DataFrame({"item_id": items, "title": "", "category": "", "brand": "", "price": np.nan})


def example_spec(vocabs: dict[str, Vocabulary], cutoffs: tuple[int, int], cfg: RayrecConfig) -> ExampleSpec:
    """What ``build_user_examples`` needs besides the events, from the vocabularies and the config."""
    p = cfg.preprocess
    return ExampleSpec(
        users=pd.Index(vocabs["users"].values), items=pd.Index(vocabs["items"].values),
        tokens=pd.Index(vocabs["tokens"].values), cutoffs_ms=cutoffs, history_length=p.history_length,
        random_negatives=p.random_negatives, seed=p.seed, history_gap_s=p.history_gap_s,
    )  # fmt: skip


def event_counts(rows_read: int, rejected_by_reason: dict[str, int], duplicates: int,
                 filtered_by_reason: dict[str, int], kcore_rounds: list[dict[str, int]], kept: int,
                 kept_interactions: int) -> dict[str, Any]:
    """The manifest's ``counts``: each term as counted from its own rows, and whether they add up."""
    rejected, filtered = sum(rejected_by_reason.values()), sum(filtered_by_reason.values())
    return {
        "rows_read": rows_read, "rejected": rejected, "duplicates": duplicates, "filtered_kcore": filtered,
        "kept": kept, "kept_interactions": kept_interactions,
        "adds_up": rows_read == kept + rejected + duplicates + filtered,
        "rejected_by_reason": rejected_by_reason, "filtered_by_reason": filtered_by_reason,
        "kcore_period": KCORE_PERIOD, "kcore_rounds": kcore_rounds,
    }  # fmt: skip


def verify_outputs(out: Path, cfg: RayrecConfig, manifest: dict[str, Any]) -> None:
    """Raises PreprocessError unless the manifest's terms add up and each matches a recount of its files."""
    if not manifest["counts"]["adds_up"]:
        raise PreprocessError(f"internal error: counts do not add up: {manifest['counts']}")
    problems = check_manifest(out, cfg.source)
    if problems:
        raise PreprocessError(f"internal error: {out / 'manifest.json'} does not match its outputs: "
                              + "; ".join(problems))


@dataclass
class _Quarantined:
    """What the validation, duplicate and k-core stages set aside, for the manifest's counts."""

    rows_read: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    filtered_by_reason: dict[str, int] = field(default_factory=dict)
    kcore_rounds: list[dict[str, Any]] = field(default_factory=list)


def run_preprocess(cfg: RayrecConfig, on_stage: StageCallback = lambda _: None) -> dict[str, Any]:
    """Runs the whole stage; returns the manifest (also written to ``<out_dir>/manifest.json``)."""
    started = time.time()
    out = Path(cfg.preprocess.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    on_stage("checking input files")
    files = check_files(cfg)
    on_stage("reading and validating the catalog")
    catalog, catalog_counts = load_catalog(cfg, out)
    quarantined = _Quarantined()
    unique = _unique_valid_events(cfg, files.read, event_validator(cfg, catalog), out, quarantined, on_stage)
    on_stage("k-core filtering on the training period")
    # The cutoffs come first: k-core decides on the training period alone (kcore's docstring).
    cutoffs = _time_cutoffs(unique, cfg)
    kept = _kcore_kept(unique, cutoffs, cfg, out, quarantined, on_stage)
    del unique  # free the object store: one copy of the log at a time
    # Recounted on the kept rows of every period: the vocabularies and the derived catalog hold
    # the new users and items of the later periods too.
    counts = sum_counts(kept.map_batches(count_keys, batch_format="pandas").to_pandas())

    on_stage("building vocabularies and the temporal split")
    if catalog is None:
        catalog = derived_catalog(counts)
    tokens = kept.map_batches(search_tokens, batch_format="pandas").unique("token")
    base = Path(cfg.preprocess.base_vocab_dir) if cfg.preprocess.base_vocab_dir else None
    vocabs = build_vocabs(catalog, counts, tokens, base)
    for v in vocabs.values():
        v.save(out / "vocab")
    kept.map_batches(search_event_rows, batch_format="pandas",
                     fn_kwargs={"cutoffs_ms": cutoffs}).write_parquet(str(out / "search_events"))

    on_stage("building sequences, ranking and search examples")
    examples = _write_examples(kept, example_spec(vocabs, cutoffs, cfg), out)
    n_kept = kept.count()
    del kept
    split_counts = examples.groupby(["kind", "split"]).count().to_pandas()

    on_stage("writing the item table and manifest")
    items, price_edges = item_table(catalog, vocabs, cfg, _train_popularity(examples))
    pq.write_table(items, out / "items.parquet")
    n_users = int(counts.loc[counts.kind == "user", "n"].sum())
    manifest = _manifest(cfg, started, files, catalog_counts, quarantined, n_kept, n_users, split_counts, vocabs,
                         cutoffs, _split_time_ranges(examples), price_edges)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    on_stage("checking the manifest against the outputs")
    verify_outputs(out, cfg, manifest)
    return manifest


def _manifest(cfg: RayrecConfig, started: float, files: Any, catalog_counts: dict[str, Any], q: _Quarantined,
              n_kept: int, n_users: int, split_counts: pd.DataFrame, vocabs: dict[str, Any], cutoffs: Any,
              time_ranges: Any, price_edges: Any) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "config_fingerprint": cfg.fingerprint(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2),
        "source": {"format": cfg.source.format, "files_read": files.read, "empty_files": files.empty,
                   "bad_files": files.bad},
        "counts": event_counts(q.rows_read, q.rejected_by_reason, q.duplicates, q.filtered_by_reason,
                               q.kcore_rounds, n_kept, n_users),
        "catalog": catalog_counts,
        "outputs": _outputs_summary(split_counts),
        "vocab_sizes": {name: len(v) for name, v in vocabs.items()},
        "vocab_fingerprint": vocab_set_fingerprint(vocabs.values()),
        "split_cutoffs_ms": list(cutoffs),
        "time_ranges": time_ranges,
        "price_bucket_edges": price_edges,
        "history_length": cfg.preprocess.history_length,
        "history_gap_s": cfg.preprocess.history_gap_s,
    }  # fmt: skip


def _unique_valid_events(cfg: RayrecConfig, paths: list[str], validator: Any, out: Path,
                         quarantined: _Quarantined, on_stage: StageCallback) -> Any:
    """The event files read and validated, rejects written to ``rejects/`` and exact repeats to
    ``duplicates/``; returns the remaining rows (a materialized Ray Dataset)."""
    import ray

    on_stage(f"reading and validating {len(paths)} event file(s)")
    validated = (
        ray.data.from_items([{"path": f} for f in paths], override_num_blocks=len(paths))
        .map_batches(_read_event_files, batch_size=1, fn_kwargs={"source": cfg.source})
        .map_batches(validator, batch_format="pyarrow")
        .materialize()
    )
    quarantined.rows_read = validated.count()
    rejects = validated.map_batches(_rejected, batch_format="pandas")
    rejects.write_parquet(str(out / "rejects"))
    quarantined.rejected_by_reason = _grouped_counts(rejects, REASON_CODE)

    on_stage("removing exact duplicates")
    marked = (
        validated.map_batches(_valid_with_bucket, batch_format="pandas",
                              fn_kwargs={"buckets": cfg.preprocess.user_buckets})
        .groupby(USER_BUCKET).map_groups(mark_duplicates, batch_format="pandas")
        .materialize()
    )
    del validated  # free the object store: one copy of the log at a time
    duplicates = marked.map_batches(_rows_where, batch_format="pandas", fn_kwargs={"column": "is_duplicate", "value": True})
    duplicates.write_parquet(str(out / "duplicates"))
    quarantined.duplicates = duplicates.count()
    return marked.map_batches(_rows_where, batch_format="pandas",
                              fn_kwargs={"column": "is_duplicate", "value": False}).materialize()


def _kcore_kept(unique: Any, cutoffs: Any, cfg: RayrecConfig, out: Path, quarantined: _Quarantined,
                on_stage: StageCallback) -> Any:
    """k-core on the training period: removed rows written to ``filtered/`` with their round and
    reason; returns the kept rows (a materialized Ray Dataset), an error when none are left."""
    tagged, kcore_stats = _kcore(unique, cutoffs[0], cfg, on_stage)
    filtered = tagged.map_batches(_filtered_rows, batch_format="pandas").materialize()
    filtered.write_parquet(str(out / "filtered"))
    quarantined.filtered_by_reason = _grouped_counts(filtered, REASON_CODE)
    by_round = {int(k): v for k, v in _grouped_counts(filtered, KCORE_ROUND).items()}
    quarantined.kcore_rounds = round_stats(kcore_stats, by_round)
    del filtered
    kept = tagged.map_batches(_kept_rows, batch_format="pandas").materialize()
    if kept.count() == 0:
        raise PreprocessError("no events left after k-core filtering; lower preprocess.min_user_events "
                              "or preprocess.min_item_events")
    return kept


def _write_examples(kept: Any, spec: Any, out: Path) -> Any:
    """Sequences, ranking and search examples per user bucket, written in a fixed order; returns them."""
    # Sorted because the buckets leave the groupby's shuffle in the order it finishes them, which
    # nothing fixes; the ranker reads its examples in file order, so the order is part of the data.
    examples = (kept.groupby(USER_BUCKET)
                .map_groups(_bucket_examples, batch_format="pandas", fn_kwargs={"spec": spec})
                .sort([USER_BUCKET, BUCKET_ROW])
                .materialize())
    for kind, columns in OUTPUTS.items():
        write_ordered_parquet(examples.map_batches(_drop_kind_columns, batch_format="pandas",
                                                   fn_kwargs={"kind": kind, "keep": columns}),
                              out / OUTPUT_DIRS[kind])
    return examples


def _outputs_summary(split_counts: pd.DataFrame) -> dict[str, dict[str, int]]:
    summary: dict[str, dict[str, int]] = {OUTPUT_DIRS[k]: dict.fromkeys(SPLIT_NAMES, 0) for k in OUTPUTS}
    for kind, split, n in split_counts[["kind", "split", "count()"]].itertuples(index=False):
        summary[OUTPUT_DIRS[kind]][SPLIT_NAMES[int(split)]] = int(n)
    return summary


def _split_time_ranges(examples: Any) -> dict[str, list[str]]:
    from ray.data.aggregate import Max, Min

    events = examples.map_batches(_rows_where, batch_format="pandas", fn_kwargs={"column": "kind", "value": "event"})
    ranges = events.groupby("split").aggregate(Min("ts_ms"), Max("ts_ms")).to_pandas()
    iso = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    return {SPLIT_NAMES[int(r.split)]: [iso(r["min(ts_ms)"]), iso(r["max(ts_ms)"])] for _, r in ranges.iterrows()}


def _train_popularity(examples: Any) -> pd.Series:
    def train_items(df: pd.DataFrame) -> pd.DataFrame:
        mask = (df["kind"] == "event") & (df["split"] == 0)
        return df.loc[mask, "item_idx"].value_counts().rename_axis("item_idx").reset_index(name="n")

    counts = examples.map_batches(train_items, batch_format="pandas").to_pandas()
    return counts.groupby("item_idx")["n"].sum()

