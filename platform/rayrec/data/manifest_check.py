"""Checks a `rayrec preprocess` output folder from its files: the manifest's counts, recounted, and
a content digest of every output table.

``check_manifest`` recounts every term of ``manifest.json`` from its own data, never as a
difference of the others: rows read by re-reading the input files through the same loader
(``sources.read_event_file``), kept rows from ``events/`` (the interactions) + ``search_events/``
(the searches), each reject reason from ``rejects/``, duplicates from ``duplicates/``, each k-core
reason and round from ``filtered/`` and the examples per split from ``events/``, ``ranking/`` and
``search/``. It then checks that the recounted terms add up:
rows_read = kept + Σ rejected_by_reason + duplicates + Σ filtered_by_reason.

``output_digests`` hashes each output table's rows independently of their order (engines may write
rows in another order and other files), for comparing two runs' outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrec.config import SourceConfig
from rayrec.data import sources

MANIFEST = "manifest.json"
EXAMPLE_DIRS = ("events", "ranking", "search")
TABLES = (*EXAMPLE_DIRS, "search_events", "rejects", "duplicates", "filtered", "items.parquet",
          "rejects_catalog.parquet")  # fmt: skip
SPLITS = ("train", "valid", "test")


class ManifestMismatch(RuntimeError):
    """A manifest whose counts its output files do not bear out; ``problems`` names each term."""

    def __init__(self, out_dir: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{Path(out_dir) / MANIFEST} does not match its outputs: " + "; ".join(problems))


# ---- counting ------------------------------------------------------------------------------


def _parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the files of a folder; none when the output was not written (no rows)."""
    if path.is_file():
        return [path]
    return sorted(path.glob("*.parquet")) if path.is_dir() else []


def count_rows(path: Path) -> int:
    """Rows of a Parquet file or folder, from the files' footers."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in _parquet_files(path))


def count_by(path: Path, column: str) -> dict[str, int]:
    """Rows per value of ``column`` (as str) in a Parquet file or folder."""
    counts: Counter[str] = Counter()
    for f in _parquet_files(path):
        values = pq.read_table(f, columns=[column]).column(0).to_pandas()
        counts.update({str(k): int(n) for k, n in values.value_counts().items()})
    return dict(counts)


def count_input_rows(files: list[str], source: SourceConfig) -> int:
    """Rows the source loader yields for ``files`` (malformed lines included, as rows with a reason)."""
    return sum(t.num_rows for f in files for t in sources.read_event_file(f, source))


def recount(out_dir: str | Path, source: SourceConfig, files: list[str]) -> dict[str, Any]:
    """The manifest's terms as counted from the input ``files`` and the output folder's files."""
    out = Path(out_dir)
    events = count_rows(out / "events")
    return {
        "rows_read": count_input_rows(files, source),
        "rejected_by_reason": count_by(out / "rejects", "reason_code"),
        "duplicates": count_rows(out / "duplicates"),
        "filtered_by_reason": count_by(out / "filtered", "reason_code"),
        "events_removed_by_round": {int(k): n for k, n in count_by(out / "filtered", "kcore_round").items()},
        "kept": events + count_rows(out / "search_events"),
        "kept_interactions": events,
        "outputs": {d: {SPLITS[int(k)]: n for k, n in count_by(out / d, "split").items()} for d in EXAMPLE_DIRS},
    }


# ---- checking ------------------------------------------------------------------------------


def _differences(name: str, manifest: dict[str, int], recounted: dict[str, int]) -> list[str]:
    """Per key of either dict: where the manifest's count is not the recount (missing counts 0)."""
    return [f"{name}[{k}]: manifest {manifest.get(k, 0)}, files {recounted.get(k, 0)}"
            for k in sorted(set(manifest) | set(recounted), key=str) if manifest.get(k, 0) != recounted.get(k, 0)]


def check_manifest(out_dir: str | Path, source: SourceConfig) -> list[str]:
    """Problems found recounting ``<out_dir>/manifest.json`` from the files (empty: it adds up).

    ``source`` is the run's source config: the input files are re-read through its loader.
    """
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    c = manifest["counts"]
    found = recount(out, source, manifest["source"]["files_read"])
    problems = [f"{term}: manifest {c[term]}, files {found[term]}"
                for term in ("rows_read", "duplicates", "kept", "kept_interactions") if c[term] != found[term]]
    problems += _differences("rejected_by_reason", c["rejected_by_reason"], found["rejected_by_reason"])
    problems += _differences("filtered_by_reason", c["filtered_by_reason"], found["filtered_by_reason"])
    by_round = {r["round"]: r["events_removed"] for r in c["kcore_rounds"]}
    problems += _differences("kcore_rounds.events_removed", by_round, found["events_removed_by_round"])
    for total, parts in (("rejected", "rejected_by_reason"), ("filtered_kcore", "filtered_by_reason")):
        if c[total] != sum(found[parts].values()):
            problems.append(f"{total}: manifest {c[total]}, files {sum(found[parts].values())}")
    for d in EXAMPLE_DIRS:
        problems += _differences(f"outputs.{d}", manifest["outputs"][d], found["outputs"][d])
    parts = {"kept": found["kept"], "rejected": sum(found["rejected_by_reason"].values()),
             "duplicates": found["duplicates"], "filtered": sum(found["filtered_by_reason"].values())}
    if found["rows_read"] != sum(parts.values()):
        terms = " + ".join(f"{k} {v}" for k, v in parts.items())
        problems.append(f"the files do not add up: rows_read {found['rows_read']} != {terms}")
    if not c["adds_up"]:
        problems.append("the manifest says its counts do not add up (adds_up: false)")
    return problems


def verify_manifest(out_dir: str | Path, source: SourceConfig) -> None:
    """Raises ManifestMismatch unless ``check_manifest`` finds nothing."""
    problems = check_manifest(out_dir, source)
    if problems:
        raise ManifestMismatch(Path(out_dir), problems)


# ---- digests -------------------------------------------------------------------------------

_NULL = np.uint64(0x9E3779B97F4A7C15)  # the hash of a null value
_ODD = np.uint64(0xBF58476D1CE4E5B9)  # multiplying by an odd number mod 2^64 loses nothing


def _hash(values: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(values, categorize=False)


def _values_hashes(arr: pa.Array) -> np.ndarray:
    """One uint64 per value. Types are widened (ints to int64, floats to float64) so that a column
    one engine writes as int32 and another as int64 hashes the same; NaN and null are one value."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return np.full(len(arr), _NULL, np.uint64)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return _list_hashes(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type):
        # Hash each distinct string once (Arrow finds them), then spread by index.
        encoded = pc.dictionary_encode(arr)
        distinct = _hash(encoded.dictionary.to_numpy(zero_copy_only=False).astype(object))
        idx = pc.fill_null(encoded.indices, -1).to_numpy()
        return np.where(idx < 0, _NULL, distinct[np.maximum(idx, 0)])
    if pa.types.is_floating(arr.type):
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(np.isnan(values), _NULL, _hash(np.nan_to_num(values)))
    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type) or pa.types.is_temporal(arr.type):
        values = pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy()
        return np.where(arr.is_null().to_numpy(zero_copy_only=False), _NULL, _hash(values))
    return _values_hashes(pa.array([None if v is None else repr(v) for v in arr.to_pylist()], pa.string()))


def _list_hashes(arr: pa.Array) -> np.ndarray:
    """Per list: an order-sensitive hash of its elements (element hash mixed with its position)."""
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy().astype(np.int64)  # -1: a null list
    sizes = np.maximum(lengths, 0)
    elements = _values_hashes(pc.list_flatten(arr))
    position = np.arange(len(elements), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # One hash per position, not per element (lists are long, positions few): the elements
    # dominate the cost, so each gets a multiply rather than a second hash.
    per_position = _hash(np.arange(sizes.max(initial=0), dtype=np.int64))
    mixed = (elements ^ per_position[position]) * _ODD
    total = np.r_[np.uint64(0), np.cumsum(mixed, dtype=np.uint64)]  # wraps mod 2^64: still a sum per list
    ends = np.cumsum(sizes)
    return _hash((total[ends] - total[ends - sizes]) ^ _hash(lengths))


def _row_hashes(batch: pa.RecordBatch, columns: list[str]) -> np.ndarray:
    rows = np.zeros(batch.num_rows, np.uint64)
    for name in columns:
        i = batch.schema.get_field_index(name)
        h = _values_hashes(batch.column(i)) if i >= 0 else np.full(batch.num_rows, _NULL, np.uint64)
        rows = _hash(rows ^ h)
    return rows


def table_digest(path: str | Path) -> str:
    """SHA-256 of a Parquet file's or folder's rows as a multiset: the same rows in any order and
    any files give the same digest. Column names count, their order within a file does not."""
    files = _parquet_files(Path(path))
    columns = sorted({name for f in files for name in pq.read_schema(f).names})
    hashes = [_row_hashes(b, columns) for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 16)]
    rows = np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    if rows.size == 0:  # an engine may write no file for an empty output, another an empty one
        return "empty"
    digest = hashlib.sha256(json.dumps(columns).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


def output_digests(out_dir: str | Path) -> dict[str, str]:
    """``table_digest`` of every output table and the SHA-256 of every vocabulary file, by name."""
    out = Path(out_dir)
    digests = {name: table_digest(out / name) for name in TABLES}
    for vocab in sorted((out / "vocab").glob("*.json")):
        digests[f"vocab/{vocab.name}"] = hashlib.sha256(vocab.read_bytes()).hexdigest()
    return digests
