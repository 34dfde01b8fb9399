"""Single-process pandas baseline of `rayrec preprocess`, owned by the preprocessing benchmark.

What a user without Ray would write: load the whole event log into one DataFrame, then validate,
dedupe, cut the temporal split, k-core filter on the training period, build vocabularies and
examples, all in one process. To compare execution engines rather than re-derive rules, it applies
rayrec's public functions that define the semantics (the file checks and loaders, the validator,
``mark_duplicates``, the split cutoffs from a 2^16-bin histogram, the k-core rule of
``rayrec.data.kcore``, the vocabularies, ``example_spec`` with its ``history_gap_s``,
``build_user_examples``, the item table, the manifest's counts) and ends with the same manifest
check, so every output table must come out identical (``benchmarks/preprocess.py`` compares their
digests).

Examples are built per user bucket (``groupby(user_bucket)``), as the pipeline does: the counts do
not depend on the grouping, but the random negatives are seeded per bucket, so this also makes the
Parquet outputs equal row for row.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrec.config import RayrecConfig
from rayrec.data import sources
from rayrec.data.examples import SPLIT_NAMES, USER_BUCKET, build_user_examples, mark_duplicates, user_bucket
from rayrec.data.kcore import KCORE_ROUND, count_keys, iterate_kcore, round_stats, tag_removed, train_counts
from rayrec.data.manifest_check import verify_manifest
from rayrec.data.preprocess import (OUTPUT_DIRS, OUTPUTS, PreprocessError, build_vocabs, check_files,
                                    derived_catalog, event_counts, event_validator, example_spec,
                                    histogram_range, item_table, load_catalog, search_event_rows,
                                    search_tokens, split_cutoffs, ts_histogram)
from rayrec.data.validate import REASON_CODE
from rayrec.schema import REASON

StageCallback = Callable[[str], None]


def _write(df: pd.DataFrame | pa.Table, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, folder / "part-00000.parquet")


def _value_counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def _time_cutoffs(df: pd.DataFrame, cfg: RayrecConfig) -> tuple[int, int]:
    """The pipeline's rule on the whole frame: a histogram is additive, so per-block and global agree."""
    lo, hi = histogram_range(df["ts_ms"].min(), df["ts_ms"].max())
    return split_cutoffs(ts_histogram(df, lo, hi), lo, hi, cfg)


def _kcore(df: pd.DataFrame, train_end_ms: int, cfg: RayrecConfig,
           on_stage: StageCallback) -> tuple[pd.DataFrame, list[dict[str, int]]]:
    """The training-period k-core on the whole frame; returns (rows tagged with their round, per-round stats)."""
    p = cfg.preprocess
    removals, stats = iterate_kcore(lambda removed: train_counts(df, train_end_ms, removed),
                                    p.min_user_events, p.min_item_events, p.max_kcore_rounds, on_stage)
    return tag_removed(df, removals, p.min_user_events, p.min_item_events), stats


def run_pandas_preprocess(cfg: RayrecConfig, on_stage: StageCallback = lambda _: None) -> dict[str, Any]:
    """Runs the baseline; returns its manifest (counts, output row counts, cutoffs, vocab sizes), also
    written to ``<out_dir>/manifest.json`` and checked against the outputs like the pipeline's."""
    started = time.time()
    p = cfg.preprocess
    out = Path(p.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    on_stage("checking input files")
    files = check_files(cfg)
    on_stage("reading and validating the catalog")
    catalog, catalog_counts = load_catalog(cfg, out)
    validator = event_validator(cfg, catalog)

    on_stage("reading and validating event files")
    raw = pa.concat_tables([t for f in files.read for t in sources.read_event_file(f, cfg.source)]).to_pandas()
    validated = validator.validate(raw)
    del raw
    is_rejected = validated[REASON].notna()
    rejects = validated[is_rejected]
    _write(rejects, out / "rejects")
    rejected_by_reason = _value_counts(rejects[REASON_CODE])
    valid = validated[~is_rejected].drop(columns=[REASON, REASON_CODE])
    valid[USER_BUCKET] = user_bucket(valid["user_id"], p.user_buckets)
    rows_read = len(validated)
    del validated, rejects

    on_stage("removing exact duplicates")
    marked = mark_duplicates(valid)  # one global sort + duplicated(DEDUPE_KEY, keep="first")
    del valid
    duplicates = marked[marked["is_duplicate"]]
    _write(duplicates, out / "duplicates")
    unique = marked[~marked["is_duplicate"]]
    n_duplicates = len(duplicates)
    del marked, duplicates

    on_stage("k-core filtering on the training period")
    cutoffs = _time_cutoffs(unique, cfg)
    tagged, kcore_stats = _kcore(unique, cutoffs[0], cfg, on_stage)
    del unique
    is_filtered = tagged[KCORE_ROUND] > 0
    filtered = tagged[is_filtered].drop(columns=[USER_BUCKET, "is_duplicate"])
    _write(filtered, out / "filtered")
    filtered_by_reason = _value_counts(filtered[REASON_CODE])
    kcore_rounds = round_stats(kcore_stats, {int(k): int(n) for k, n in filtered[KCORE_ROUND].value_counts().items()})
    kept = tagged[~is_filtered].drop(columns=[KCORE_ROUND, REASON_CODE, REASON])
    del tagged, filtered
    if len(kept) == 0:
        raise PreprocessError("no events left after k-core filtering")
    counts = count_keys(kept)  # every period's kept rows, as the pipeline recounts them

    on_stage("building vocabularies and the temporal split")
    if catalog is None:
        catalog = derived_catalog(counts)
    tokens = search_tokens(kept)["token"].tolist()
    vocabs = build_vocabs(catalog, counts, tokens, Path(p.base_vocab_dir) if p.base_vocab_dir else None)
    for v in vocabs.values():
        v.save(out / "vocab")
    _write(search_event_rows(kept, cutoffs), out / "search_events")

    on_stage("building sequences, ranking and search examples")
    spec = example_spec(vocabs, cutoffs, cfg)
    examples = pa.concat_tables([build_user_examples(g, spec) for _, g in kept.groupby(USER_BUCKET, sort=True)])
    n_kept = len(kept)
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
    items, _ = item_table(catalog, vocabs, cfg, popularity)
    pq.write_table(items, out / "items.parquet")

    manifest = {
        "seconds": round(time.time() - started, 2),
        "source": {"format": cfg.source.format, "files_read": files.read, "empty_files": files.empty,
                   "bad_files": files.bad},
        "counts": event_counts(rows_read, rejected_by_reason, n_duplicates, filtered_by_reason, kcore_rounds,
                               n_kept, int(counts.loc[counts.kind == "user", "n"].sum())),
        "catalog": catalog_counts,
        "outputs": outputs,
        "vocab_sizes": {name: len(v) for name, v in vocabs.items()},
        "split_cutoffs_ms": list(cutoffs),
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    on_stage("checking the manifest against the outputs")
    verify_manifest(out, cfg.source)
    return manifest
