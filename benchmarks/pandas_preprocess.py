"""Single-process pandas baseline of `rayrec preprocess`, owned by the preprocessing benchmark.

What a user without Ray would write: load the whole event log into one DataFrame, then validate,
dedupe, k-core filter, build vocabularies, split by time and build examples, all in one process.
To compare execution engines rather than re-derive rules, it reuses rayrec's pure functions that
define the semantics (the loaders, ``EventValidator.validate``, ``mark_duplicates``,
``build_user_examples``, ``Vocabulary``/``_build_vocabs``, the item table) and re-implements in
numpy the pipeline's time-cutoff rule (a 2^16-bin histogram of interaction timestamps), so every
count of the manifest must come out identical.

Examples are built per user bucket (``groupby(user_bucket)``), as the pipeline does: the counts do
not depend on the grouping, but the random negatives are seeded per bucket, so this also makes the
Parquet outputs equal row for row.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrec.config import RayrecConfig
from rayrec.data import sources
from rayrec.data.examples import SPLIT_NAMES, USER_BUCKET, ExampleSpec, build_user_examples, mark_duplicates, user_bucket
from rayrec.data.preprocess import (HISTOGRAM_BINS, OUTPUT_DIRS, OUTPUTS, PreprocessError, _build_vocabs,
                                    _derived_catalog, _item_table)
from rayrec.data.validate import REASON_CODE, EventValidator, validate_catalog
from rayrec.features.transforms import tokenize
from rayrec.schema import INTERACTION_TYPES, REASON

StageCallback = Callable[[str], None]


def _event_files(cfg: RayrecConfig) -> list[str]:
    """The files the pipeline reads: empty ones are skipped, bad ones fail or are skipped."""
    keep = []
    for path in sources.event_files(cfg.source):
        problem = sources.check_file(path)
        if problem is None:
            keep.append(path)
        elif not problem.startswith("empty file") and cfg.source.on_bad_file != "skip":
            raise PreprocessError(f"{path}: {problem}")
    return keep


def _load_catalog(cfg: RayrecConfig, out: Path) -> tuple[pd.DataFrame | None, dict[str, int]]:
    paths = sources.catalog_files(cfg.source)
    if not paths:
        return None, {"rows_read": 0, "rejected": 0, "kept": 0}
    raw = pa.concat_tables([t for p in paths for t in sources.read_catalog_file(p, cfg.source)]).to_pandas()
    valid, rejected = validate_catalog(raw)
    if len(rejected):
        rejected.to_parquet(out / "rejects_catalog.parquet", index=False)
    return valid, {"rows_read": len(raw), "rejected": len(rejected), "kept": len(valid)}


def _write(df: pd.DataFrame | pa.Table, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, folder / "part-00000.parquet")


def _interaction_counts(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Interactions per user (search-only users count 0) and per item, like the pipeline's _count_keys."""
    is_inter = df["event_type"].isin(INTERACTION_TYPES)
    return is_inter.groupby(df["user_id"]).sum(), df.loc[is_inter, "item_id"].value_counts()


def _kcore(df: pd.DataFrame, cfg: RayrecConfig) -> tuple[pd.DataFrame, list[dict[str, int]], pd.Series]:
    """Iterative k-core with value_counts; returns (kept events, per-round stats, final per-user counts)."""
    p = cfg.preprocess
    rounds: list[dict[str, int]] = []
    for r in range(1, p.max_kcore_rounds + 1):
        users, items = _interaction_counts(df)
        keep_u, keep_i = users.index[users >= p.min_user_events], items.index[items >= p.min_item_events]
        if len(keep_u) == len(users) and len(keep_i) == len(items):
            return df, rounds, users
        before = len(df)
        df = df[df["user_id"].isin(keep_u) & ((df["event_type"] == "search") | df["item_id"].isin(keep_i))]
        rounds.append({"round": r, "users_removed": len(users) - len(keep_u),
                       "items_removed": len(items) - len(keep_i), "events_removed": before - len(df)})
    return df, rounds, _interaction_counts(df)[0]


def _time_cutoffs(df: pd.DataFrame, cfg: RayrecConfig) -> tuple[int, int]:
    """The pipeline's rule on the whole frame: a histogram is additive, so per-block and global agree."""
    lo, hi = float(df["ts_ms"].min()), float(df["ts_ms"].max()) + 1
    ts = df.loc[df["event_type"].isin(INTERACTION_TYPES), "ts_ms"].to_numpy(np.float64)
    counts, _ = np.histogram(ts, bins=HISTOGRAM_BINS, range=(lo, hi))
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    p = cfg.preprocess
    t1 = edges[np.searchsorted(cum, 1 - p.valid_fraction - p.test_fraction) + 1]
    t2 = edges[np.searchsorted(cum, 1 - p.test_fraction) + 1]
    return int(np.ceil(t1)), int(np.ceil(max(t2, t1 + 1)))


def run_pandas_preprocess(cfg: RayrecConfig, on_stage: StageCallback = lambda _: None) -> dict[str, Any]:
    """Runs the baseline; returns the manifest's counts, output row counts, cutoffs and vocab sizes."""
    started = time.time()
    p = cfg.preprocess
    out = Path(p.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    on_stage("reading and validating the catalog")
    catalog, catalog_counts = _load_catalog(cfg, out)
    known = frozenset(catalog["item_id"]) if catalog is not None and cfg.validate_.require_known_items else None
    validator = EventValidator(
        known_items=known,
        now_ms=(time.time() + cfg.validate_.max_future_skew_s) * 1000.0,
        min_ms=pd.Timestamp(cfg.validate_.min_timestamp, tz="UTC").value / 1e6,
    )

    on_stage("reading and validating event files")
    files = _event_files(cfg)
    raw = pa.concat_tables([t for f in files for t in sources.read_event_file(f, cfg.source)]).to_pandas()
    validated = validator.validate(raw)
    del raw
    is_rejected = validated[REASON].notna()
    rejects = validated[is_rejected]
    _write(rejects, out / "rejects")
    rejected_by_reason = {str(k): int(v) for k, v in rejects[REASON_CODE].value_counts().sort_index().items()}
    valid = validated[~is_rejected].drop(columns=[REASON, REASON_CODE])
    valid[USER_BUCKET] = user_bucket(valid["user_id"], p.user_buckets)
    rows_read = len(validated)
    del validated, rejects

    on_stage("removing exact duplicates")
    marked = mark_duplicates(valid)  # one global sort + duplicated(DEDUPE_KEY, keep="first")
    del valid
    _write(marked[marked["is_duplicate"]], out / "duplicates")
    unique = marked[~marked["is_duplicate"]]
    n_duplicates = len(marked) - len(unique)
    del marked

    on_stage("k-core filtering")
    kept, kcore_rounds, user_counts = _kcore(unique, cfg)
    n_kept = len(kept)
    if n_kept == 0:
        raise PreprocessError("no events left after k-core filtering")

    on_stage("building vocabularies and the temporal split")
    counts = pd.DataFrame({"kind": "user", "key": user_counts.index, "n": user_counts.to_numpy()})
    if catalog is None:
        items = _interaction_counts(kept)[1]
        catalog = _derived_catalog(pd.DataFrame({"kind": "item", "key": items.index, "n": items.to_numpy()}))
    tokens = sorted({t for q in kept.loc[kept["event_type"] == "search", "query"] for t in tokenize(q)})
    vocabs = _build_vocabs(catalog, counts, tokens, Path(p.base_vocab_dir) if p.base_vocab_dir else None)
    for v in vocabs.values():
        v.save(out / "vocab")
    cutoffs = _time_cutoffs(kept, cfg)

    on_stage("building sequences, ranking and search examples")
    spec = ExampleSpec(
        users=pd.Index(vocabs["users"].values), items=pd.Index(vocabs["items"].values),
        tokens=pd.Index(vocabs["tokens"].values), cutoffs_ms=cutoffs, history_length=p.history_length,
        random_negatives=p.random_negatives, seed=p.seed,
    )  # fmt: skip
    examples = pa.concat_tables([build_user_examples(g, spec) for _, g in kept.groupby(USER_BUCKET, sort=True)])
    del kept
    outputs: dict[str, dict[str, int]] = {}
    for kind, columns in OUTPUTS.items():
        part = examples.filter(pc.equal(examples["kind"], kind))
        _write(part.select(list(columns)), out / OUTPUT_DIRS[kind])
        split = part["split"].to_numpy()
        outputs[OUTPUT_DIRS[kind]] = {name: int((split == i).sum()) for i, name in enumerate(SPLIT_NAMES)}

    on_stage("writing the item table and manifest")
    train = examples.filter(pc.and_(pc.equal(examples["kind"], "event"), pc.equal(examples["split"], 0)))
    popularity = pd.Series(train["item_idx"].to_numpy()).value_counts()
    item_table, _ = _item_table(catalog, vocabs, cfg, popularity)
    pq.write_table(item_table, out / "items.parquet")

    filtered = len(unique) - n_kept
    rejected = sum(rejected_by_reason.values())
    return {
        "seconds": round(time.time() - started, 2),
        "counts": {
            "rows_read": rows_read, "rejected": rejected, "duplicates": n_duplicates,
            "filtered_kcore": filtered, "kept": n_kept, "kept_interactions": int(user_counts.sum()),
            "adds_up": rows_read == n_kept + rejected + n_duplicates + filtered,
            "rejected_by_reason": rejected_by_reason, "kcore_rounds": kcore_rounds,
        },
        "catalog": catalog_counts,
        "outputs": outputs,
        "vocab_sizes": {name: len(v) for name, v in vocabs.items()},
        "split_cutoffs_ms": list(cutoffs),
    }  # fmt: skip
