"""Row validation: every raw event or catalog row leaves here either typed and valid, or with a reason.

Rules are checked in a fixed order and a row gets the first reason that applies, as a short code
(``reason_code``, what the manifest counts) and a sentence naming the field, the value and the fix
(``reason``). A reason a loader already set (a malformed line, a cancelled invoice) is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from rayrec.schema import EVENT_TYPES, REASON, SOURCE_FILE, SOURCE_ROW

REASON_CODE = "reason_code"
VALID_EVENT_COLUMNS = (
    "user_id", "item_id", "event_type", "ts_ms", "session_id", "query", "price", "quantity",
    SOURCE_FILE, SOURCE_ROW, REASON, REASON_CODE,
)  # fmt: skip


def reason_code_of(reason: str) -> str:
    """'malformed line: expected 8 ...' -> 'malformed_line': the words before any punctuation."""
    head = re.match(r"[A-Za-z _]+", reason)
    return re.sub(r"\s+", "_", head.group(0).strip().lower()) if head else "source_rule"


def _clean(series: pd.Series) -> pd.Series:
    """Strings with surrounding whitespace removed; null and whitespace-only become ''."""
    return series.astype("object").where(series.notna(), "").astype(str).str.strip()


def parse_timestamps_ms(raw: pd.Series) -> pd.Series:
    """Epoch milliseconds (float, NaN when unparsable) from ISO-8601 or unix seconds/milliseconds.

    Numbers above 1e11 are taken as milliseconds: 1e11 seconds is the year 5138, so no real
    seconds value is that large, while any millisecond value after 1973 is.
    """
    text = _clean(raw)
    numeric = pd.to_numeric(text.where(text.str.fullmatch(r"\d+(\.\d+)?"), None), errors="coerce")
    ms = np.where(numeric > 1e11, numeric, numeric * 1000.0)
    iso_mask = np.isnan(ms) & (text != "").to_numpy()
    if iso_mask.any():
        parsed = pd.to_datetime(text[iso_mask], format="ISO8601", utc=True, errors="coerce")
        # pandas 3 infers the resolution from the text, so convert the unit explicitly.
        iso_ms = parsed.dt.as_unit("ms").astype("int64").astype("float64")
        iso_ms = np.where(parsed.isna().to_numpy(), np.nan, iso_ms.to_numpy())
        ms[iso_mask] = iso_ms
    return pd.Series(ms, index=raw.index, dtype="float64")


def _numbers(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(parsed float values, mask of present-but-unparsable) for an optional numeric column."""
    text = _clean(raw)
    values = pd.to_numeric(text.where(text != "", None), errors="coerce").astype("float64")
    return values, (text != "") & values.isna()


@dataclass
class EventValidator:
    """Validates raw event batches against the event schema; a plain callable for Ray Data."""

    known_items: frozenset[str] | None
    now_ms: float
    min_ms: float
    event_types: tuple[str, ...] = field(default=EVENT_TYPES)

    def __call__(self, batch: pa.Table | pd.DataFrame) -> pa.Table:
        # Arrow out, built with from_pandas so missing reasons become nulls, not pickled NaNs.
        return pa.Table.from_pandas(self.validate(batch), preserve_index=False)

    def validate(self, batch: pa.Table | pd.DataFrame) -> pd.DataFrame:
        df = batch.to_pandas() if isinstance(batch, pa.Table) else batch
        out = pd.DataFrame(index=df.index)
        for col in ("user_id", "item_id", "event_type", "session_id", "query"):
            out[col] = _clean(df[col])
        out["event_type"] = out["event_type"].str.lower()
        ts = parse_timestamps_ms(df["timestamp"])
        price, bad_price = _numbers(df["price"])
        quantity, bad_quantity = _numbers(df["quantity"])
        is_search = out["event_type"] == "search"
        raw_ts = _clean(df["timestamp"])

        # Messages are built only for the rows a rule rejects: (rule, failed mask, message of rows).
        def quoted(col: pd.Series) -> Callable[[np.ndarray], pd.Series]:
            return lambda hit: "'" + _clean(col[hit]).str.slice(0, 60) + "'"

        q_type, q_ts, q_price, q_qty, q_item = (quoted(df["event_type"]), quoted(raw_ts), quoted(df["price"]),
                                                quoted(df["quantity"]), quoted(out["item_id"]))
        checks: list[tuple[str, pd.Series, Callable[[np.ndarray], object]]] = [
            ("missing user_id", out["user_id"] == "",
             lambda hit: "user_id is empty; every event needs the user who did it"),
            ("unknown event_type", ~out["event_type"].isin(self.event_types),
             lambda hit: "event_type " + q_type(hit) + f" is not one of {', '.join(self.event_types)}"),
            ("missing item_id", ~is_search & (out["item_id"] == ""),
             lambda hit: out["event_type"][hit] + " event has an empty item_id; only search events may omit it"),
            ("missing query", is_search & (out["query"] == ""), lambda hit: "search event has an empty query"),
            ("unparsable timestamp", ts.isna(),
             lambda hit: "timestamp " + q_ts(hit) + " is not ISO-8601 (2024-03-05T14:02:11Z) or unix seconds/ms"),
            ("future timestamp", ts > self.now_ms,
             lambda hit: "timestamp " + q_ts(hit) + " is in the future; check the producer's clock or time zone"),
            ("implausible timestamp", ts < self.min_ms,
             lambda hit: "timestamp " + q_ts(hit) + " is before validate.min_timestamp"),
            ("unparsable price", bad_price, lambda hit: "price " + q_price(hit) + " is not a number"),
            ("negative price", price < 0, lambda hit: "price " + q_price(hit) + " is negative"),
            ("unparsable quantity", bad_quantity, lambda hit: "quantity " + q_qty(hit) + " is not a number"),
            ("non-positive quantity", quantity <= 0, lambda hit: "quantity " + q_qty(hit) + " must be > 0"),
        ]
        if self.known_items is not None:
            unknown = ~is_search & (out["item_id"] != "") & ~out["item_id"].isin(self.known_items)
            checks.append(("unknown item", unknown,
                           lambda hit: "item_id " + q_item(hit) + " is not in the catalog; add it to the "
                           "catalog or set validate.require_known_items=false"))

        reason = df[REASON].astype("object") if REASON in df else pd.Series(None, index=df.index, dtype="object")
        code = reason.map(lambda r: reason_code_of(r) if isinstance(r, str) else None)
        for name, failed, message in checks:
            hit = failed.fillna(False).to_numpy(dtype=bool) & reason.isna().to_numpy()
            if hit.any():
                text = message(hit)
                reason[hit] = text.to_numpy() if isinstance(text, pd.Series) else text
                code[hit] = name.replace(" ", "_").replace("-", "_")

        out["ts_ms"] = ts.fillna(0).astype("int64")
        out["price"] = price
        out["quantity"] = quantity
        out[SOURCE_FILE] = df[SOURCE_FILE].astype(str)
        out[SOURCE_ROW] = df[SOURCE_ROW].astype("int64")
        out[REASON] = reason.astype("object")
        out[REASON_CODE] = code.astype("object")
        return out[list(VALID_EVENT_COLUMNS)]


def validate_catalog(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split catalog rows into (valid, rejected-with-reason). Items keep their first valid row."""
    df = raw.copy()
    for col in ("item_id", "title", "category", "brand"):
        df[col] = _clean(df[col])
    price, bad_price = _numbers(df["price"])
    df["price"] = price
    reason = df[REASON].astype("object") if REASON in df else pd.Series(None, index=df.index, dtype="object")
    dup = df["item_id"].duplicated(keep="first") & (df["item_id"] != "")
    rules = [
        (df["item_id"] == "", "item_id is empty; every catalog row needs an id"),
        (bad_price, "price is not a number"),
        (price < 0, "price is negative"),
        (dup, "item_id repeats an earlier catalog row; the first row is kept"),
    ]
    for failed, message in rules:
        hit = failed.fillna(False).to_numpy(dtype=bool) & reason.isna().to_numpy()
        reason[hit] = message
    df[REASON] = reason
    df[REASON_CODE] = reason.map(lambda r: reason_code_of(r) if isinstance(r, str) else None)
    bad = reason.notna()
    return df[~bad].drop(columns=[REASON, REASON_CODE]).reset_index(drop=True), df[bad].reset_index(drop=True)
