"""Every validation rule, one row each, plus hypothesis-generated malformed rows."""

from __future__ import annotations

import time

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayrec.data.validate import EventValidator, parse_timestamps_ms, reason_code_of, validate_catalog
from rayrec.schema import RAW_CATALOG_SCHEMA, RAW_EVENT_COLUMNS, RAW_EVENT_SCHEMA

GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "purchase", "timestamp": "2024-01-01T00:00:00Z",
        "session_id": "s1", "query": None, "price": "9.99", "quantity": "1"}
VALIDATOR = EventValidator(known_items=frozenset({"i1", "i2"}), now_ms=time.time() * 1000, min_ms=788918400000.0)


def _table(rows: list[dict]) -> pa.Table:
    full = [{**r, "source_file": "f.csv", "source_row": i + 1, "reason": r.get("reason")} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=RAW_EVENT_SCHEMA)


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"user_id": None}, "missing_user_id", "user_id"),
    ({"user_id": "   "}, "missing_user_id", "user_id"),
    ({"event_type": "wishlist"}, "unknown_event_type", "'wishlist'"),
    ({"item_id": ""}, "missing_item_id", "item_id"),
    ({"event_type": "search", "item_id": "", "query": " "}, "missing_query", "query"),
    ({"timestamp": "yesterday"}, "unparsable_timestamp", "'yesterday'"),
    ({"timestamp": "2024-13-45T99:00:00Z"}, "unparsable_timestamp", "ISO-8601"),
    ({"timestamp": None}, "unparsable_timestamp", "timestamp"),
    ({"timestamp": "2099-01-01T00:00:00Z"}, "future_timestamp", "future"),
    ({"timestamp": "3600"}, "implausible_timestamp", "min_timestamp"),
    ({"price": "cheap"}, "unparsable_price", "'cheap'"),
    ({"price": "-12.50"}, "negative_price", "'-12.50'"),
    ({"quantity": "x"}, "unparsable_quantity", "'x'"),
    ({"quantity": "0"}, "non_positive_quantity", "> 0"),
    ({"item_id": "I999999"}, "unknown_item", "not in the catalog"),
    ({"reason": "malformed line: expected 8 fields, got 3: a,b,c"}, "malformed_line", "expected 8"),
])  # fmt: skip
def test_each_rule_names_the_field(change, code, words):
    out = VALIDATOR.validate(_table([GOOD, {**GOOD, **change}]))
    assert out["reason"].isna().iloc[0], out["reason"].iloc[0]
    assert out["reason_code"].iloc[1] == code
    assert words in out["reason"].iloc[1]


def test_valid_rows_are_typed():
    out = VALIDATOR.validate(_table([GOOD, {**GOOD, "event_type": "SEARCH", "item_id": "", "query": "red shoes",
                                   "price": None, "quantity": None, "timestamp": "1704067200"}]))
    assert out["reason"].isna().all()
    assert out["ts_ms"].tolist() == [1704067200000, 1704067200000]
    assert out["event_type"].tolist() == ["purchase", "search"]
    assert out["price"].iloc[0] == pytest.approx(9.99)


def test_unknown_items_allowed_without_a_catalog():
    out = EventValidator(known_items=None, now_ms=time.time() * 1000, min_ms=0).validate(_table([{**GOOD, "item_id": "new"}]))
    assert out["reason"].isna().all()


def test_timestamps_in_seconds_milliseconds_and_zones_agree():
    ms = parse_timestamps_ms(pd.Series(["2024-01-01T01:00:00+01:00", "1704067200", "1704067200000",
                                        "2024-01-01T00:00:00.000Z", "2024-01-01 00:00:00"]))
    assert ms.tolist() == [1704067200000.0] * 5


def test_reason_code_is_the_leading_words():
    assert reason_code_of("cancelled invoice (InvoiceNo starts with 'C')") == "cancelled_invoice"
    assert reason_code_of("::::") == "source_rule"


text_or_none = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["", " ", "-1", "1e309", "NaN", "2024-01-01"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.fixed_dictionaries({c: text_or_none for c in RAW_EVENT_COLUMNS}), min_size=1, max_size=20))
def test_any_row_is_either_valid_and_typed_or_rejected_with_a_reason(rows):
    out = VALIDATOR.validate(_table(rows))
    assert len(out) == len(rows)  # nothing dropped
    valid = out[out["reason"].isna()]
    assert out.loc[out["reason"].notna(), "reason_code"].notna().all()
    assert (valid["user_id"] != "").all()
    assert valid["event_type"].isin(["view", "click", "add_to_cart", "purchase", "search"]).all()
    assert (valid["ts_ms"] > 0).all() and (valid["ts_ms"] <= VALIDATOR.now_ms).all()
    assert not (valid["price"] < 0).any()
    interactions = valid[valid["event_type"] != "search"]
    assert interactions["item_id"].isin(["i1", "i2"]).all()


def test_catalog_rejects_with_reasons_and_keeps_first_of_duplicates():
    raw = pa.Table.from_pylist([
        {"item_id": "a", "title": "A", "category": "X > Y", "brand": "b", "price": "1.5"},
        {"item_id": "", "title": "no id", "category": "", "brand": "", "price": "1"},
        {"item_id": "b", "title": "B", "category": "", "brand": "", "price": "-2"},
        {"item_id": "a", "title": "A again", "category": "", "brand": "", "price": "3"},
        {"item_id": "c", "title": "C", "category": "", "brand": "", "price": None},
    ], schema=RAW_CATALOG_SCHEMA).to_pandas()  # fmt: skip
    valid, rejected = validate_catalog(raw)
    assert valid["item_id"].tolist() == ["a", "c"] and valid["title"].tolist() == ["A", "C"]
    assert len(valid) + len(rejected) == len(raw)
    assert rejected["reason"].str.contains("empty|negative|repeats").all()
