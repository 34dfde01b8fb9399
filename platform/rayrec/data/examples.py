"""Per-user work on one hash bucket of users: exact-duplicate removal and training examples.

Preprocessing groups valid events by ``user_bucket`` so that each call here sees every event of
its users; the functions are pure pandas/numpy/arrow and are unit-tested without Ray.

Outputs of ``build_user_examples`` share one table with a ``kind`` column so that one shuffle
produces all of them:
- ``event``: every kept interaction with its history (the sequence examples, and the clean log
  that evaluation reads);
- ``ranking``: one row per (user, session, item) with click/cart/purchase labels from the deepest
  funnel stage reached (viewed-only rows are natural negatives), plus ``random_negatives`` uniformly
  drawn items per positive;
- ``search``: a search event paired with the first item clicked (or deeper) after it in the same
  session, before the next search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from rayrec.features.transforms import history_window, tokenize
from rayrec.features.vocab import UNK_ID, encode_token_lists
from rayrec.schema import FUNNEL_STAGE

DEDUPE_KEY = ["user_id", "item_id", "event_type", "ts_ms", "session_id", "query", "price", "quantity"]
SPLIT_NAMES = ("train", "valid", "test")
USER_BUCKET = "user_bucket"


def user_bucket(user_ids: pd.Series, buckets: int) -> np.ndarray:
    """Stable hash partition of users (pandas' hash is seeded identically in every process)."""
    hashed = pd.util.hash_array(user_ids.astype("object").to_numpy())
    return (hashed % np.uint64(buckets)).astype(np.int32)


def _sort_events(df: pd.DataFrame) -> pd.DataFrame:
    stage = df["event_type"].map(FUNNEL_STAGE).fillna(-1)
    return (
        df.assign(_stage=stage)
        .sort_values(["user_id", "ts_ms", "_stage", "item_id", "session_id", "source_file", "source_row"],
                     kind="stable")
        .drop(columns="_stage")
        .reset_index(drop=True)
    )


def mark_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``is_duplicate``: True for every repeat of an earlier row with the same event values."""
    df = _sort_events(df)
    df["is_duplicate"] = df.duplicated(subset=DEDUPE_KEY, keep="first")
    return df


@dataclass(frozen=True)
class ExampleSpec:
    """What the example builder needs besides the events: vocabularies as sorted value indexes."""

    users: pd.Index
    items: pd.Index
    tokens: pd.Index
    cutoffs_ms: tuple[int, int]
    history_length: int
    random_negatives: int
    seed: int
    history_gap_s: float = 0.0  # an event/ranking example's history ends this long before it


def _encode(index: pd.Index, values: pd.Series) -> np.ndarray:
    codes = index.get_indexer(values.astype("object"))
    return np.where(codes < 0, UNK_ID, codes).astype(np.int32)


def split_of(ts_ms: np.ndarray, cutoffs_ms: tuple[int, int]) -> np.ndarray:
    """0 train (ts < t1), 1 valid (t1 <= ts < t2), 2 test (ts >= t2)."""
    return np.searchsorted(np.asarray(cutoffs_ms), ts_ms, side="right").astype(np.int8)


def _list_array(matrix: np.ndarray, valid: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix[valid], type=value_type))


@dataclass
class _Interactions:
    user_idx: np.ndarray
    item_idx: np.ndarray
    stage: np.ndarray
    ts_ms: np.ndarray
    session: np.ndarray
    user_start: np.ndarray  # first row of this row's user
    # (user's rank in the row order << 42) + ts: rows are sorted by (user, ts), so this one key is
    # sorted and a (user, time) lookup is one searchsorted.
    order_key: np.ndarray

    def position_before(self, user_start: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
        """Per query: the first row of the user (whose first row is ``user_start``) at or after
        ``ts_ms``; the rows before it are earlier."""
        rank = self.order_key[user_start] >> 42
        return np.maximum(np.searchsorted(self.order_key, (rank << 42) + ts_ms, side="left"), user_start)

    def history_end(self, positions: np.ndarray, gap_ms: int) -> np.ndarray:
        """Where the history of the rows at ``positions`` ends: right before them, or, with a gap,
        before the user's first row within ``gap_ms`` of them (the visit they happened in)."""
        if gap_ms <= 0:
            return positions
        ends = self.position_before(self.user_start[positions], self.ts_ms[positions] - gap_ms + 1)
        return np.minimum(ends, positions)

    def history(self, positions: np.ndarray, user_starts: np.ndarray, target_ts: np.ndarray,
                length: int) -> dict[str, pa.Array]:
        idx, valid = history_window(user_starts, positions, length)
        gaps = (target_ts[:, None] - self.ts_ms[idx]).astype(np.float32) / 1000.0
        return {
            "hist_items": _list_array(self.item_idx[idx], valid, pa.int32()),
            "hist_types": _list_array(self.stage[idx], valid, pa.int8()),
            "hist_gaps_s": _list_array(gaps, valid, pa.float32()),
        }


def _interactions(df: pd.DataFrame, spec: ExampleSpec) -> _Interactions:
    user_idx = _encode(spec.users, df["user_id"])
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]]) if len(df) else np.array([], int)
    lengths = np.diff(np.r_[starts, len(df)])
    ts_ms = df["ts_ms"].to_numpy(np.int64)
    return _Interactions(
        user_idx=user_idx,
        item_idx=_encode(spec.items, df["item_id"]),
        stage=df["event_type"].map(FUNNEL_STAGE).to_numpy(np.int8),
        ts_ms=ts_ms,
        session=df["session_id"].astype(str).to_numpy(object),
        user_start=np.repeat(starts, lengths),
        order_key=(np.repeat(np.arange(len(starts), dtype=np.int64), lengths) << 42) + ts_ms,
    )


def _table(columns: dict[str, object], n: int, kind: str) -> pa.Table:
    base = {"kind": pa.array([kind] * n, pa.string())}
    return pa.table({**base, **columns})


EXAMPLE_SCHEMA = pa.schema([
    ("kind", pa.string()), ("user_idx", pa.int32()), ("item_idx", pa.int32()), ("ts_ms", pa.int64()),
    ("split", pa.int8()), ("stage", pa.int8()), ("session_id", pa.string()),
    ("label_click", pa.int8()), ("label_cart", pa.int8()), ("label_purchase", pa.int8()),
    ("negative", pa.string()), ("query", pa.string()), ("query_tokens", pa.list_(pa.int32())),
    ("hist_items", pa.list_(pa.int32())), ("hist_types", pa.list_(pa.int8())),
    ("hist_gaps_s", pa.list_(pa.float32())),
])  # fmt: skip


def _event_rows(it: _Interactions, spec: ExampleSpec) -> pa.Table:
    n = len(it.ts_ms)
    positions = np.arange(n)
    cols = {
        "user_idx": it.user_idx, "item_idx": it.item_idx, "ts_ms": it.ts_ms,
        "split": split_of(it.ts_ms, spec.cutoffs_ms), "stage": it.stage,
        "session_id": pa.array(it.session, pa.string()),
        **it.history(it.history_end(positions, _gap_ms(spec)), it.user_start, it.ts_ms, spec.history_length),
    }  # fmt: skip
    return _table(cols, n, "event")


def _gap_ms(spec: ExampleSpec) -> int:
    return int(round(spec.history_gap_s * 1000))


def _ranking_rows(it: _Interactions, spec: ExampleSpec, rng: np.random.Generator) -> pa.Table:
    n = len(it.ts_ms)
    # Events without a session id form their own group: a repeat of the same item is a new exposure.
    session_key = np.where(it.session == "", np.char.add("@", it.ts_ms.astype(str)), it.session)
    frame = pd.DataFrame({"u": it.user_idx, "s": session_key, "i": it.item_idx, "stage": it.stage,
                          "pos": np.arange(n)})
    grouped = frame.groupby(["u", "s", "i"], sort=False).agg(stage=("stage", "max"), pos=("pos", "min"))
    pos = grouped["pos"].to_numpy()
    # Viewed-only rows (stage 0) are the natural negatives; logs without views have none.
    stage = grouped["stage"].to_numpy(np.int8)
    rep = np.repeat(np.flatnonzero(stage >= FUNNEL_STAGE["click"]), spec.random_negatives)
    n_items = len(spec.items)
    # Uniform over real items (ids 2..n_items-1) except the positive itself.
    negatives = rng.integers(2, max(n_items - 1, 3), size=rep.size)
    negatives = np.minimum(np.where(negatives >= it.item_idx[pos[rep]], negatives + 1, negatives), n_items - 1)

    all_pos = np.r_[pos, pos[rep]]
    label_stage = np.r_[stage, np.zeros(rep.size, np.int8)]
    ts = it.ts_ms[all_pos]
    cols = {
        "user_idx": it.user_idx[all_pos], "item_idx": np.r_[it.item_idx[pos], negatives].astype(np.int32),
        "ts_ms": ts, "split": split_of(ts, spec.cutoffs_ms),
        "stage": np.r_[stage, np.full(rep.size, -1, np.int8)],
        "session_id": pa.array(it.session[all_pos], pa.string()),
        "label_click": (label_stage >= 1).astype(np.int8), "label_cart": (label_stage >= 2).astype(np.int8),
        "label_purchase": (label_stage >= 3).astype(np.int8),
        "negative": pa.array(np.r_[np.where(stage >= 1, "", "viewed"), np.full(rep.size, "random")], pa.string()),
        **it.history(it.history_end(all_pos, _gap_ms(spec)), it.user_start[all_pos], ts, spec.history_length),
    }  # fmt: skip
    return _table(cols, len(all_pos), "ranking")


def _pair_searches(searches: pd.DataFrame, inter: pd.DataFrame, stage: np.ndarray) -> pd.DataFrame:
    """Each search with the first clicked (or deeper) item after it in its session, if any.

    Searches and clicks are merged in time order per session; a search pairs with the row right
    after it when that row is a click, so a second search before any click closes the first.
    """
    clicks = inter.loc[stage >= FUNNEL_STAGE["click"], ["user_id", "session_id", "ts_ms", "item_id"]]
    merged = pd.concat([searches[["user_id", "session_id", "ts_ms", "query"]].assign(_click=0),
                        clicks.assign(_click=1)], ignore_index=True)
    merged = merged.sort_values(["user_id", "session_id", "ts_ms", "_click"], kind="stable")
    following = merged.groupby(["user_id", "session_id"], sort=False)[["_click", "item_id"]].shift(-1)
    hit = (merged["_click"] == 0) & (following["_click"] == 1)
    return merged.loc[hit, ["user_id", "session_id", "ts_ms", "query"]].assign(item_id=following.loc[hit, "item_id"])


def _search_rows(searches: pd.DataFrame, inter: pd.DataFrame, it: _Interactions, spec: ExampleSpec) -> pa.Table:
    hits = _pair_searches(searches, inter, it.stage) if len(searches) else pd.DataFrame()
    if hits.empty:
        return EXAMPLE_SCHEMA.empty_table()
    hits = hits.sort_values(["user_id", "ts_ms"], kind="stable")
    user_idx = _encode(spec.users, hits["user_id"])
    ts = hits["ts_ms"].to_numpy(np.int64)
    # History = the user's interactions strictly before the search (the visit so far included).
    starts = np.unique(it.user_start)
    first = starts[pd.Series(np.arange(len(starts)), index=it.user_idx[starts]).reindex(user_idx).to_numpy()]
    positions = it.position_before(first, ts)
    tokens = encode_token_lists(spec.tokens, [tokenize(q) for q in hits["query"]])
    cols = {
        "user_idx": user_idx, "item_idx": _encode(spec.items, hits["item_id"]), "ts_ms": ts,
        "split": split_of(ts, spec.cutoffs_ms), "stage": np.full(len(hits), -1, np.int8),
        "session_id": pa.array(hits["session_id"].astype(str), pa.string()),
        "query": pa.array(hits["query"].astype(str), pa.string()),
        "query_tokens": tokens,
        **it.history(positions, first, ts, spec.history_length),
    }  # fmt: skip
    return _table(cols, len(hits), "search")


def build_user_examples(df: pd.DataFrame, spec: ExampleSpec) -> pa.Table:
    """All example kinds for the (complete) users in ``df``, in ``EXAMPLE_SCHEMA``."""
    df = _sort_events(df)
    is_search = (df["event_type"] == "search").to_numpy()
    inter = df[~is_search].reset_index(drop=True)
    it = _interactions(inter, spec)
    # Seeded by the bucket's first user, so a bucket draws the same negatives in every run.
    first_user = np.array([df["user_id"].iloc[0] if len(df) else ""], dtype=object)
    rng = np.random.default_rng([spec.seed, int(pd.util.hash_array(first_user)[0] % (1 << 31))])
    parts = [_event_rows(it, spec), _ranking_rows(it, spec, rng), _search_rows(df[is_search], inter, it, spec)]
    return pa.concat_tables([_fill(p).select(EXAMPLE_SCHEMA.names).cast(EXAMPLE_SCHEMA) for p in parts])


def _fill(table: pa.Table) -> pa.Table:
    """Adds the example columns a kind does not have, as nulls."""
    for f in EXAMPLE_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table

