"""Faults in the input data: corrupt rows, a truncated Parquet file and an empty file, on top of a
tiny synthetic log. Every row read is accounted for (kept, quarantined per reason, duplicate or
k-core filtered) and every damaged or empty file is named."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rayrec.config import load_config
from rayrec.data.preprocess import PreprocessError, run_preprocess
from rayrec.data.synthetic import generate
from tests.conftest import REPO
from tests.reliability.figures import record

pytestmark = pytest.mark.integration

MALFORMED = [
    "only,three,fields",  # too few fields
    "u1,i1,click,2024-01-01T00:00:00Z,s,q,1.0,1,one too many,and another",  # too many
    "garbage without separators",
]
BAD_VALUES = {"unknown_event_type": "wishlist", "unparsable_timestamp": "not a time"}


def _config(events: Path, catalog: Path, out: Path, *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", [
        f"source.events={events}", f"source.catalog={catalog}", f"preprocess.out_dir={out}",
        "preprocess.min_user_events=2", "preprocess.min_item_events=2", *extra,
    ])  # fmt: skip


def _plainly_valid(row: dict[str, str], known_items: set[str]) -> bool:
    """A generated line none of the generator's injected faults touched (they are checked here so
    that copies of it can only be rejected for what this test breaks)."""
    try:
        year = pd.Timestamp(row["timestamp"]).year
        price_ok = row["price"] == "" or float(row["price"]) >= 0
    except (ValueError, KeyError):
        return False
    return (bool(row["user_id"].strip()) and row["item_id"] in known_items and 2000 < year < 2030 and price_ok
            and row["event_type"] in ("view", "click", "add_to_cart", "purchase"))


def _rejects(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "rejects").to_pandas()


def test_corrupt_rows_are_quarantined_by_reason_and_an_empty_file_is_named(tmp_path, ray_local):
    raw = tmp_path / "raw"
    summary = generate(raw, scale="tiny", seed=21)
    events = raw / "events"
    part = sorted(events.glob("*.csv"))[0]
    header, *lines = part.read_text().splitlines()
    columns = header.split(",")
    catalog = pd.read_csv(raw / "catalog.csv", dtype=str, keep_default_na=False)
    known_items = set(catalog.loc[~catalog["price"].str.startswith("-"), "item_id"])
    good = [line for line in lines if _plainly_valid(dict(zip(columns, line.split(","))), known_items)
            and len(line.split(",")) == len(columns)][:20]
    assert len(good) == 20
    bad_values = []
    for code, value in BAD_VALUES.items():  # a well-formed line whose value the validator rejects
        fields = good[0].split(",")
        fields[columns.index("event_type" if code == "unknown_event_type" else "timestamp")] = value
        bad_values.append(",".join(fields))
    corrupt = events / "zz-corrupt.csv"
    body = [*good[:7], MALFORMED[0], *good[7:14], MALFORMED[1], *bad_values, *good[14:], MALFORMED[2]]
    corrupt.write_text("\n".join([header, *body]) + "\n")
    empty = events / "zz-empty.csv"
    empty.write_bytes(b"")
    out = tmp_path / "out"

    manifest = run_preprocess(_config(events, raw / "catalog.csv", out))

    c = manifest["counts"]
    rejects = _rejects(out)
    mine = rejects[rejects["source_file"] == str(corrupt)]
    by_reason = Counter(mine["reason_code"])
    record("data_corrupt_rows_and_empty_file", tmp_path, {
        "rows_in_generated_log": summary.n_events, "rows_in_corrupt_file": len(body),
        "rows_read": c["rows_read"], "kept": c["kept"], "rejected": c["rejected"], "duplicates": c["duplicates"],
        "filtered_kcore": c["filtered_kcore"], "rejected_by_reason": c["rejected_by_reason"],
        "corrupt_file_rejected_by_reason": dict(by_reason), "empty_files": manifest["source"]["empty_files"],
    })  # fmt: skip
    # Every line is read (the malformed ones too) and every row read ends up in exactly one place.
    assert c["rows_read"] == summary.n_events + len(body)
    assert c["adds_up"] and c["rows_read"] == c["kept"] + c["rejected"] + c["duplicates"] + c["filtered_kcore"]
    assert c["rejected"] == sum(c["rejected_by_reason"].values()) == len(rejects)
    # The corrupt file's rows are quarantined with their reason and line number, nothing more.
    assert by_reason == Counter({"malformed_line": len(MALFORMED), **dict.fromkeys(BAD_VALUES, 1)}), by_reason
    assert c["rejected_by_reason"]["malformed_line"] == len(MALFORMED)  # the generator writes none
    malformed_rows = sorted(mine.loc[mine["reason_code"] == "malformed_line", "source_row"])
    assert malformed_rows == [body.index(m) + 1 for m in MALFORMED]
    # The empty file is read as zero rows and named.
    assert manifest["source"]["empty_files"] == [str(empty)] and str(corrupt) in manifest["source"]["files_read"]
    assert json.loads((out / "manifest.json").read_text())["counts"] == c


def test_a_truncated_parquet_file_is_refused_by_name_or_skipped_and_named(tmp_path, ray_local):
    raw = tmp_path / "raw"
    generate(raw, scale="tiny", seed=23)
    log = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted((raw / "events").glob("*.csv"))])
    folder = tmp_path / "parquet"
    folder.mkdir()
    half = len(log) // 2
    log.iloc[:half].to_parquet(folder / "a.parquet")
    log.iloc[half:].to_parquet(folder / "b.parquet")
    whole = (folder / "b.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(whole[: len(whole) * 2 // 3])  # cut mid-file: the footer is gone
    (folder / "c.parquet").write_bytes(b"")
    catalog = tmp_path / "catalog.parquet"
    pd.read_csv(raw / "catalog.csv", dtype=str, keep_default_na=False).to_parquet(catalog)
    generic = ["source.format=generic", "source.file_format=parquet",
               "source.columns={" + ", ".join(f"{c}: {c}" for c in log.columns) + "}",
               "source.catalog_columns={item_id: item_id, title: title, category: category, brand: brand, "
               "price: price}"]  # fmt: skip

    # Default (on_bad_file: fail): the run stops before reading anything, naming the file.
    with pytest.raises(PreprocessError, match=r"b\.parquet.*(truncated|corrupt)") as refused:
        run_preprocess(_config(folder, catalog, tmp_path / "refused", *generic))
    assert "on_bad_file" in str(refused.value)  # and says how to go on

    manifest = run_preprocess(_config(folder, catalog, tmp_path / "skipped", *generic, "source.on_bad_file=skip"))
    c = manifest["counts"]
    source = manifest["source"]
    record("data_truncated_parquet_and_empty_file", tmp_path, {
        "rows_in_readable_file": half, "rows_in_truncated_file": len(log) - half, "rows_read": c["rows_read"],
        "kept": c["kept"], "rejected": c["rejected"], "duplicates": c["duplicates"],
        "filtered_kcore": c["filtered_kcore"], "bad_files": source["bad_files"], "empty_files": source["empty_files"],
        "refused_with": str(refused.value)[:200],
    })  # fmt: skip
    assert [Path(b["path"]).name for b in source["bad_files"]] == ["b.parquet"]
    assert "truncated or corrupt Parquet" in source["bad_files"][0]["error"]
    assert [Path(p).name for p in source["empty_files"]] == ["c.parquet"]
    assert [Path(p).name for p in source["files_read"]] == ["a.parquet"]
    # Nothing of the truncated file is counted as read: the rows read are exactly a.parquet's.
    assert c["rows_read"] == half and c["adds_up"]
    assert c["rows_read"] == c["kept"] + c["rejected"] + c["duplicates"] + c["filtered_kcore"]
