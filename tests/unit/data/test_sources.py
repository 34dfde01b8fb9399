"""Tests of rayrec.data.sources: every format onto the canonical raw schema, nothing lost.

Real files are read from ../shared/datasets beside the checkout (never copied here); the rest are
tiny fixtures written to tmp_path.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rayrec.config import SourceConfig
from rayrec.data import sources
from rayrec.data.sources import (
    SourceFileError,
    catalog_files,
    check_file,
    event_files,
    read_catalog_file,
    read_event_file,
)
from rayrec.schema import RAW_CATALOG_SCHEMA, RAW_EVENT_SCHEMA
from tests.conftest import SHARED_DATASETS

ML100K = SHARED_DATASETS / "movielens-100k"
RETAIL = SHARED_DATASETS / "online_retail" / "online_retail.csv"
needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(), reason=f"{ML100K} not present (real datasets live in ../shared/datasets)"
)
needs_retail = pytest.mark.skipif(
    not RETAIL.is_file(), reason=f"{RETAIL} not present (real datasets live in ../shared/datasets)"
)
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def read_all(tables, schema: pa.Schema = RAW_EVENT_SCHEMA) -> pa.Table:
    """Concatenate a reader's chunks, checking that every one has exactly the canonical schema."""
    tables = list(tables)
    for t in tables:
        assert t.schema.equals(schema), t.schema
    return pa.concat_tables(tables) if tables else schema.empty_table()


def rows_by(table: pa.Table, column: str) -> dict[str, dict]:
    return {r[column]: r for r in table.to_pylist()}


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return str(path)


# ------------------------------------------------------------------------------------ real data


@needs_ml100k
def test_movielens_100k_real_files() -> None:
    cfg = SourceConfig(format="movielens", events=str(ML100K), catalog=None)
    [ratings] = event_files(cfg)
    [movies] = catalog_files(cfg)
    assert ratings == str(ML100K / "u.data") and movies == str(ML100K / "u.item")
    assert check_file(ratings) is None and check_file(movies) is None

    events = read_all(read_event_file(ratings, cfg, chunk_rows=30_000))
    assert events.num_rows == 100_000
    assert events["source_row"].to_pylist() == list(range(1, 100_001))
    first = events.slice(0, 1).to_pylist()[0]  # u.data line 1: 196	242	3	881250949
    assert first | {"source_file": None} == {
        "user_id": "196", "item_id": "242", "event_type": "click", "timestamp": "881250949",
        "session_id": None, "query": None, "price": None, "quantity": None,
        "source_file": None, "source_row": 1, "reason": None,
    }
    assert first["source_file"] == ratings
    assert pc.all(pc.equal(events["event_type"], "click")).as_py()
    assert events["reason"].null_count == events.num_rows

    catalog = read_all(read_catalog_file(movies, cfg), RAW_CATALOG_SCHEMA)
    assert catalog.num_rows == 1682
    items = rows_by(catalog, "item_id")
    assert items["1"]["title"] == "Toy Story (1995)"
    assert items["1"]["category"] == "Movies > Animation"  # first of Animation|Children's|Comedy
    assert items["543"]["title"] == "Misérables, Les (1995)"  # ISO-8859-1 decoded
    assert items["267"]["category"] == "Movies > unknown"
    assert items["1"]["brand"] is None and items["1"]["price"] is None


@needs_retail
def test_online_retail_real_file() -> None:
    # independent counts straight from the CSV
    with open(RETAIL, newline="", encoding="utf-8") as f:
        header, *lines = csv.reader(f)
    invoice, stock_code, customer = (header.index(c) for c in ("InvoiceNo", "StockCode", "CustomerID"))
    cancelled = sum(r[invoice].startswith("C") for r in lines)
    blank_customers = sum(r[customer] == "" for r in lines)
    stock_codes = {r[stock_code] for r in lines}

    cfg = SourceConfig(format="online_retail", events=str(RETAIL), catalog=None)
    [path] = event_files(cfg)
    assert catalog_files(cfg) == [path] and check_file(path) is None
    chunks = list(read_event_file(path, cfg, chunk_rows=200_000))
    assert [t.num_rows for t in chunks] == [200_000, 200_000, 141_909]
    events = read_all(chunks)
    assert events.num_rows == len(lines) == 541_909
    assert events["source_row"].to_pylist() == list(range(1, 541_910))
    assert pc.sum(pc.is_valid(events["reason"])).as_py() == cancelled == 9_288
    assert pc.all(pc.starts_with(events.filter(pc.is_valid(events["reason"]))["session_id"], "C")).as_py()
    assert events["user_id"].null_count == blank_customers
    assert not pc.any(pc.match_substring(events["user_id"], ".")).as_py()  # 17850.0 -> 17850
    assert pc.all(pc.match_substring_regex(events["timestamp"], ISO_Z.pattern)).as_py()
    first = events.slice(0, 1).to_pylist()[0]
    assert (first["user_id"], first["item_id"], first["timestamp"]) == ("17850", "85123A", "2010-12-01T08:26:00Z")
    assert (first["session_id"], first["price"], first["quantity"]) == ("536365", "2.55", "6")

    catalog = read_all(read_catalog_file(path, cfg), RAW_CATALOG_SCHEMA)
    assert catalog.num_rows == len(stock_codes) == 4_070
    assert pc.count_distinct(catalog["item_id"]).as_py() == catalog.num_rows
    assert rows_by(catalog, "item_id")["85123A"]["title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert catalog["category"].null_count == catalog["brand"].null_count == catalog.num_rows


# ---------------------------------------------------------------------------- other MovieLens


def test_movielens_1m_double_colon_format(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::3408::4\n6::1::4::978237008\n")
    write(
        tmp_path / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "260::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure\n"
        "73::Misérables, Les (1995)::Drama|Musical\n",
        encoding="latin-1",
    )
    cfg = SourceConfig(format="movielens", events=str(tmp_path), catalog=None)
    assert [os.path.basename(p) for p in event_files(cfg) + catalog_files(cfg)] == ["ratings.dat", "movies.dat"]
    events = read_all(read_event_file(event_files(cfg)[0], cfg))
    assert events["user_id"].to_pylist() == ["1", "1", None, "6"]
    assert events["item_id"].to_pylist() == ["1193", "661", None, "1"]
    assert events["timestamp"].to_pylist() == ["978300760", "978302109", None, "978237008"]
    assert events["source_row"].to_pylist() == [1, 2, 3, 4]
    assert events["reason"].to_pylist()[2].startswith("malformed line: expected 4 fields, got 3: 2")
    catalog = rows_by(read_all(read_catalog_file(catalog_files(cfg)[0], cfg), RAW_CATALOG_SCHEMA), "item_id")
    assert catalog["260"]["title"] == "Star Wars: Episode IV - A New Hope (1977)"  # single ':' kept
    assert catalog["260"]["category"] == "Movies > Action"
    assert catalog["73"]["title"] == "Misérables, Les (1995)"


def test_double_colon_split_across_reads() -> None:
    class Trickle:  # hands out 3 bytes per read, so '::' often straddles two reads
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, _: int) -> bytes:
            out, self.data = self.data[:3], self.data[3:]
            return out

    text = b"1::22::333::4\nab:::c::d:\n"
    reader = sources._DoubleColonReader(Trickle(text))  # noqa: SLF001 - the one tricky helper
    out = b"".join(iter(lambda: reader.read(5), b""))
    assert out == text.replace(b"::", b"\x1f")


def test_movielens_latest_csv(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "182727,Some Short (2017),(no genres listed)\n",
    )
    cfg = SourceConfig(format="movielens", events=str(tmp_path / "ratings.csv"), catalog=None)
    events = read_all(read_event_file(event_files(cfg)[0], cfg))
    assert events.select(["user_id", "item_id", "event_type", "timestamp"]).to_pylist()[1] == {
        "user_id": "1", "item_id": "3", "event_type": "click", "timestamp": "964981247",
    }
    catalog = rows_by(read_all(read_catalog_file(catalog_files(cfg)[0], cfg), RAW_CATALOG_SCHEMA), "item_id")
    assert catalog["11"]["title"] == "American President, The (1995)"
    assert catalog["11"]["category"] == "Movies > Comedy"
    assert catalog["182727"]["category"] == "Movies > unknown"


def test_movielens_folder_without_ratings(tmp_path: Path) -> None:
    with pytest.raises(SourceFileError, match="not a MovieLens folder") as err:
        event_files(SourceConfig(format="movielens", events=str(tmp_path)))
    assert err.value.path == str(tmp_path)


# ------------------------------------------------------------------------- other e-commerce logs


def test_retailrocket(tmp_path: Path) -> None:
    write(
        tmp_path / "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,356475,4000\n"
        "1433221955914,483717,wishlist,253185,\n",
    )
    cfg = SourceConfig(format="retailrocket", events=str(tmp_path), catalog=None)
    assert event_files(cfg) == [str(tmp_path / "events.csv")] and catalog_files(cfg) == []
    events = read_all(read_event_file(event_files(cfg)[0], cfg))
    assert events["event_type"].to_pylist() == ["view", "add_to_cart", "purchase", "wishlist"]
    assert events["session_id"].to_pylist() == [None, None, "4000", None]
    assert events["timestamp"][0].as_py() == "1433221332117" and events["user_id"][2].as_py() == "111016"
    with pytest.raises(ValueError, match="no catalog"):
        read_catalog_file(event_files(cfg)[0], cfg)


def test_online_retail_uci_dates_cancellations_and_catalog(tmp_path: Path) -> None:
    path = write(
        tmp_path / "retail.csv",
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,WHITE HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n"
        "536366,85123A,WHITE HEART,6,12/1/2010 8:28,2.95,17850,United Kingdom\n"
        'C536379,85123A,"HEART, WHITE",-1,12/1/2010 9:41,3.00,14527.0,United Kingdom\n'
        "536367,22633,,1,not a date,0,,France\n"
        "536368,22633,HAND WARMER,2,2011-06-30 23:59:00,1.85,13047.0,France\n"
        "536369,22633,hand warmer,2,2011-06-30 23:59:00,-1.00,13047.0,France\n",
    )
    cfg = SourceConfig(format="online_retail", events=path, catalog=path)
    events = read_all(read_event_file(path, cfg))
    assert events["timestamp"].to_pylist() == [
        "2010-12-01T08:26:00Z", "2010-12-01T08:28:00Z", "2010-12-01T09:41:00Z", "not a date",
        "2011-06-30T23:59:00Z", "2011-06-30T23:59:00Z",
    ]
    assert events["user_id"].to_pylist() == ["17850", "17850", "14527", None, "13047", "13047"]
    assert events["reason"].to_pylist()[2] == sources._CANCELLED  # noqa: SLF001
    assert events["reason"].null_count == 5
    assert set(events["event_type"].to_pylist()) == {"purchase"}
    catalog = read_all(read_catalog_file(path, cfg), RAW_CATALOG_SCHEMA)
    assert catalog.select(["item_id", "title", "price", "source_row"]).to_pylist() == [
        # 85123A: WHITE HEART twice; median of 2.55, 2.95, 3.00. 22633: tie -> alphabetical; median of 1.85
        {"item_id": "85123A", "title": "WHITE HEART", "price": "2.95", "source_row": 1},
        {"item_id": "22633", "title": "HAND WARMER", "price": "1.85", "source_row": 4},
    ]


# ------------------------------------------------------------------------- rayrec and generic


EVENT_HEADER = "user_id,item_id,event_type,timestamp,session_id,query,price,quantity\n"


def test_rayrec_format_directory_of_csvs(tmp_path: Path) -> None:
    write(tmp_path / "events" / "part-1" / "b.csv", EVENT_HEADER + "u2,i2,purchase,2024-01-02T00:00:00Z,s2,,9.99,1\n")
    write(tmp_path / "events" / "a.csv", EVENT_HEADER + "u1,,search,2024-01-01T00:00:00Z,s1,red shoes,,\n")
    write(tmp_path / "events" / "_SUCCESS", "")
    catalog = write(tmp_path / "catalog.csv", "item_id,title,category,brand,price\ni2,Shoe,Fashion > Shoes,Acme,9.99\n")
    cfg = SourceConfig(format="rayrec", events=str(tmp_path / "events"), catalog=catalog)
    files = event_files(cfg)
    assert files == sorted(files) and [os.path.basename(f) for f in files] == ["a.csv", "b.csv"]
    search = read_all(read_event_file(files[0], cfg)).to_pylist()[0]
    assert search["item_id"] is None and search["query"] == "red shoes" and search["price"] is None
    assert catalog_files(cfg) == [catalog]
    assert read_all(read_catalog_file(catalog, cfg), RAW_CATALOG_SCHEMA).to_pylist()[0]["brand"] == "Acme"
    glob_cfg = SourceConfig(format="rayrec", events=str(tmp_path / "events" / "**" / "b.csv"))
    assert event_files(glob_cfg) == [files[1]]


def test_rayrec_missing_header_column(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,i1,2024-01-01\n")
    with pytest.raises(SourceFileError) as err:
        list(read_event_file(path, SourceConfig()))
    assert path in str(err.value) and "event_type" in str(err.value) and "session_id" in str(err.value)


def test_no_event_files(tmp_path: Path) -> None:
    with pytest.raises(SourceFileError, match="no input files") as err:
        event_files(SourceConfig(events=str(tmp_path / "nowhere" / "*.csv")))
    assert "nowhere" in str(err.value)


MAPPING = {"user_id": "customer", "item_id": "sku", "timestamp": "ts", "price": "amount"}


def test_generic_csv_with_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "sku,customer,ts,amount,extra\nA1,c1,1700000000,3.5,x\n")
    cfg = SourceConfig(format="generic", events=path, catalog=None, columns=MAPPING, default_event_type="purchase")
    row = read_all(read_event_file(path, cfg)).to_pylist()[0]
    assert (row["user_id"], row["item_id"], row["timestamp"], row["price"]) == ("c1", "A1", "1700000000", "3.5")
    assert row["event_type"] == "purchase" and row["quantity"] is None and catalog_files(cfg) == []


def test_generic_parquet_casts_to_strings(tmp_path: Path) -> None:
    path = str(tmp_path / "log.parquet")
    ts = pa.array([1_700_000_000_000, None], pa.timestamp("ms", tz="Europe/Berlin"))
    pq.write_table(
        pa.table({"customer": [7, 8], "sku": pa.array(["A", "B"]).dictionary_encode(), "ts": ts,
                  "amount": [1.5, 2.0], "kind": ["view", "click"]}),
        path,
    )
    cfg = SourceConfig(format="generic", file_format="parquet", events=str(tmp_path), catalog=None,
                       columns=MAPPING | {"event_type": "kind"})
    assert event_files(cfg) == [path]
    table = read_all(read_event_file(path, cfg))
    assert table["user_id"].to_pylist() == ["7", "8"] and table["item_id"].to_pylist() == ["A", "B"]
    assert table["timestamp"].to_pylist() == ["2023-11-14T22:13:20.000Z", None]  # UTC, not Berlin time
    assert table["price"].to_pylist() == ["1.5", "2"] and table["event_type"].to_pylist() == ["view", "click"]


def test_generic_jsonl_and_catalog(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.jsonl",
        json.dumps({"customer": 12, "sku": "A", "ts": "2024-01-01T00:00:00Z", "amount": 2.5}) + "\n\n"
        + "[1, 2]\n" + '{"customer": "c9", "sku": "B", "ts": 1700000000}\n',
    )
    cfg = SourceConfig(format="generic", file_format="jsonl", events=path, columns=MAPPING, default_event_type="view",
                       catalog=write(tmp_path / "items.csv", "sku,name\nA,Apple\n"),
                       catalog_columns={"item_id": "sku", "title": "name"})
    table = read_all(read_event_file(path, cfg))
    assert table["user_id"].to_pylist() == ["12", None, "c9"] and table["price"].to_pylist() == ["2.5", None, None]
    assert table["source_row"].to_pylist() == [1, 2, 3]  # blank lines are not rows
    assert table["reason"][1].as_py().startswith("malformed line: expected a JSON object, got list")
    # source.file_format covers the catalog too, so a CSV catalog goes with CSV events
    csv_cfg = cfg.model_copy(update={"file_format": "csv"})
    catalog = read_all(read_catalog_file(catalog_files(csv_cfg)[0], csv_cfg), RAW_CATALOG_SCHEMA)
    assert catalog.to_pylist()[0] | {"source_file": None} == {
        "item_id": "A", "title": "Apple", "category": None, "brand": None, "price": None,
        "source_file": None, "source_row": 1, "reason": None,
    }


def test_generic_mapping_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "sku,customer,ts\nA1,c1,1\n")
    with pytest.raises(ValueError, match=r"source\.columns\.event_type.*source\.default_event_type"):
        event_files(SourceConfig(format="generic", events=path, columns=MAPPING))
    with pytest.raises(ValueError, match=r"unknown canonical column\(s\) \['user'\]"):
        event_files(SourceConfig(format="generic", events=path, columns={"user": "customer"}, default_event_type="view"))
    cfg = SourceConfig(format="generic", events=path, columns=MAPPING, default_event_type="view")
    with pytest.raises(SourceFileError, match=r"missing column\(s\) \['amount'\]") as err:
        list(read_event_file(path, cfg))
    assert err.value.path == path and path in str(err.value)
    jsonl = write(tmp_path / "log.jsonl", '{"sku": "A", "customer": 1, "ts": 2}\n')
    with pytest.raises(SourceFileError, match="amount"):
        list(read_event_file(jsonl, cfg.model_copy(update={"file_format": "jsonl"})))


# -------------------------------------------------------------------------- bad rows, bad files


def test_malformed_lines_become_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.csv",
        EVENT_HEADER
        + "u1,i1,view,1,s,,,\n"
        + "u2,i2,view,2\n"  # too few fields
        + "u3,i3,view,3,s,,,\n"
        + "u4,i4,view,4,s,,,,EXTRA," + "x" * 300 + "\n",  # too many
    )
    table = read_all(read_event_file(path, SourceConfig(events=path)))
    assert table.num_rows == 4 and table["source_row"].to_pylist() == [1, 2, 3, 4]
    assert table["user_id"].to_pylist() == ["u1", None, "u3", None]
    reasons = table["reason"].to_pylist()
    assert reasons[1] == "malformed line: expected 8 fields, got 4: u2,i2,view,2"
    assert reasons[3].startswith("malformed line: expected 8 fields, got 10: u4,i4")
    assert len(reasons[3]) == len("malformed line: expected 8 fields, got 10: ") + 200
    assert table.slice(3, 1).select(list(RAW_EVENT_SCHEMA.names[:8])).to_pylist()[0] == dict.fromkeys(
        RAW_EVENT_SCHEMA.names[:8]
    )


def test_chunking_numbers_rows_without_gaps(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", EVENT_HEADER + "".join(f"u{i},i{i},view,{i},s,,,\n" for i in range(25)))
    chunks = list(read_event_file(path, SourceConfig(events=path), chunk_rows=10))
    assert [c.num_rows for c in chunks] == [10, 10, 5]
    assert read_all(chunks)["source_row"].to_pylist() == list(range(1, 26))
    assert read_all(chunks)["user_id"].to_pylist() == [f"u{i}" for i in range(25)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bad_widths=st.lists(st.sampled_from([None, None, None, None, 1, 3, 9]), min_size=1, max_size=150),
    chunk_rows=st.integers(1, 50),
    block=st.sampled_from([128, 160, 200, 1 << 22]),
    headerless=st.booleans(),
)
@example(bad_widths=[None, 3, None, None, 9, None, 1] * 20, chunk_rows=7, block=128, headerless=True)
@example(bad_widths=[None, 3, None, None, 9, None, 1] * 20, chunk_rows=7, block=128, headerless=False)
def test_any_mix_of_lines_keeps_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_widths: list, chunk_rows: int, block: int, headerless: bool
) -> None:
    # Tiny parse blocks make pyarrow hand over many batches, with malformed lines between them
    # (and it reports malformed lines a block ahead of the batch it hands out).
    monkeypatch.setattr(sources, "_BLOCK_BYTES", block)
    width, sep = (4, "\t") if headerless else (8, ",")
    lines = [sep.join([str(n)] * (w or width)) for n, w in enumerate(bad_widths, 1)]
    if headerless:
        path, cfg = str(tmp_path / "u.data"), SourceConfig(format="movielens", events=str(tmp_path))
    else:
        path = str(tmp_path / "e.csv")
        cfg, lines = SourceConfig(events=path), [EVENT_HEADER.strip(), *lines]
    Path(path).write_text("\n".join(lines) + "\n")
    chunks = list(read_event_file(path, cfg, chunk_rows=chunk_rows))
    assert all(c.num_rows == chunk_rows for c in chunks[:-1])
    table = read_all(chunks)
    assert table["source_row"].to_pylist() == list(range(1, len(bad_widths) + 1))
    # each line's values are its own number, so a row must carry the number it was given
    assert table["user_id"].to_pylist() == [None if w else str(n) for n, w in enumerate(bad_widths, 1)]
    assert [r is not None for r in table["reason"].to_pylist()] == [w is not None for w in bad_widths]


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "")
    assert check_file(path) == "empty file (0 bytes)"
    assert list(read_event_file(path, SourceConfig(events=path))) == []
    empty_gz = tmp_path / "empty.csv.gz"
    empty_gz.write_bytes(gzip.compress(b""))
    assert check_file(str(empty_gz)).startswith("empty file")


def test_truncated_parquet(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"customer": ["c"] * 1000, "sku": ["s"] * 1000}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert check_file(str(good)) is None
    reason = check_file(str(bad))
    assert reason is not None and reason.startswith("truncated or corrupt Parquet file: ")
    cfg = SourceConfig(format="generic", file_format="parquet", events=str(bad),
                       columns={"user_id": "customer"}, default_event_type="view")
    with pytest.raises(SourceFileError) as err:
        list(read_event_file(str(bad), cfg))
    assert str(bad) in str(err.value) and err.value.path == str(bad)


def test_bad_compression_and_encoding(tmp_path: Path) -> None:
    not_gz = write(tmp_path / "e.csv.gz", EVENT_HEADER)
    assert check_file(not_gz).startswith("not valid gzip")
    data = gzip.compress((EVENT_HEADER + "u1,i1,view,1,s,,,\n" * 20_000).encode())
    truncated = tmp_path / "t.csv.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFileError, match="t.csv.gz"):
        list(read_event_file(str(truncated), SourceConfig(events=str(truncated))))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(EVENT_HEADER.encode() + "u1,Café,view,1,s,,,\n".encode("latin-1"))
    assert check_file(str(latin)) is None  # only the first line is checked
    with pytest.raises(SourceFileError, match="latin.csv.*UTF-?8"):
        list(read_event_file(str(latin), SourceConfig(events=str(latin))))
    first_line_latin = write(tmp_path / "first.csv", "caf\xe9\n", encoding="latin-1")
    assert check_file(first_line_latin).startswith("first line is not valid utf-8")
    assert check_file(str(tmp_path / "missing.csv")) == "file not found"


def test_counts_are_reproducible_across_chunk_sizes(tmp_path: Path) -> None:
    lines = [f"{u}\t{i}\t{r}\t{880000000 + n}" for n, (u, i, r) in enumerate(zip(range(300), range(5, 305), [1, 2] * 150))]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    cfg = SourceConfig(format="movielens", events=str(tmp_path))
    by_size = {n: read_all(read_event_file(str(tmp_path / "u.data"), cfg, chunk_rows=n)) for n in (1, 7, 300, 10_000)}
    assert len({t.num_rows for t in by_size.values()}) == 1
    assert all(t.equals(by_size[1]) for t in by_size.values())
    assert Counter(by_size[7]["event_type"].to_pylist()) == {"click": 300}
