"""The k-core rule of preprocessing, decided on the training period alone (pure pandas).

A user or item is judged by its interactions before the first split cutoff (the training period):
- one with no training-period event is new, the cold-start population of the later periods, and is
  kept whatever it does later;
- one with training-period events but fewer interactions there than ``preprocess.min_user_events``
  / ``min_item_events`` is removed from every period;
- removals lower other keys' training counts, so rounds repeat on the remaining training events
  until none is removed (or ``preprocess.max_kcore_rounds``). A key that had training-period events
  and lost all of them to removed partners is removed too: it is not new.

No decision reads a valid or test event, so the later periods cannot leak into which users and items
training sees. Engines (the Ray pipeline, the pandas baseline) only differ in how they count; the
rule and the round loop are here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rayrec.data.validate import REASON_CODE
from rayrec.schema import INTERACTION_TYPES, REASON

KCORE_PERIOD = "train"  # recorded in the manifest: the period the k-core decisions are made on
KCORE_ROUND = "kcore_round"  # on filtered/ rows: the round that removed the row (0 on kept rows)
REASON_USER, REASON_ITEM = "kcore_user", "kcore_item"


def count_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Interactions per user and per item as (kind, key, n); users with only searches appear with 0."""
    is_inter = df["event_type"].isin(INTERACTION_TYPES)
    users = is_inter.groupby(df["user_id"]).sum()
    items = df.loc[is_inter, "item_id"].value_counts()
    return pd.DataFrame({
        "kind": ["user"] * len(users) + ["item"] * len(items),
        "key": [*users.index, *items.index],
        "n": np.r_[users.to_numpy(), items.to_numpy()].astype(np.int64),
    })  # fmt: skip


def sum_counts(parts: pd.DataFrame) -> pd.DataFrame:
    """Per-block ``count_keys`` results added up per key."""
    return parts.groupby(["kind", "key"], as_index=False)["n"].sum()


@dataclass
class KcoreRemovals:
    """Users and items removed so far, each with the round that removed it (vocabulary-sized)."""

    users: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)

    def user_rounds(self, df: pd.DataFrame) -> np.ndarray:
        """Per row: the round that removed its user, NaN while kept."""
        return _rounds_of(df["user_id"], self.users)

    def item_rounds(self, df: pd.DataFrame) -> np.ndarray:
        # A search names no item, so only its user can remove it.
        return np.where(df["event_type"].to_numpy() == "search", np.nan, _rounds_of(df["item_id"], self.items))

    def rounds(self, df: pd.DataFrame) -> np.ndarray:
        """Per row: the first round that removed its user or item; 0 for a kept row."""
        return np.nan_to_num(np.fmin(self.user_rounds(df), self.item_rounds(df))).astype(np.int32)


def _rounds_of(keys: pd.Series, removed: dict[str, int]) -> np.ndarray:
    return keys.map(removed).to_numpy(np.float64, na_value=np.nan)


def train_counts(df: pd.DataFrame, train_end_ms: int, removals: KcoreRemovals) -> pd.DataFrame:
    """``count_keys`` of the rows still kept that fall in the training period (ts < ``train_end_ms``)."""
    return count_keys(df[(df["ts_ms"] < train_end_ms).to_numpy() & (removals.rounds(df) == 0)])


def _below(counts: pd.DataFrame, kind: str, known: frozenset[str], removed: dict[str, int], k: int) -> list[str]:
    """Keys of ``known`` (those with training-period events) not yet removed that now count < k."""
    rows = counts[counts["kind"] == kind]
    enough = frozenset(rows.loc[rows["n"] >= k, "key"])
    return sorted(key for key in known if key not in enough and key not in removed)


def iterate_kcore(
    count: Callable[[KcoreRemovals], pd.DataFrame],
    min_user_events: int,
    min_item_events: int,
    max_rounds: int,
    on_round: Callable[[str], None] = lambda _: None,
) -> tuple[KcoreRemovals, list[dict[str, int]]]:
    """Runs the rounds; ``count(removals)`` returns the summed ``train_counts`` over the whole log.

    Returns the removals and per-round stats (users and items removed; each caller adds the events
    it removed, counted from the filtered rows).
    """
    removals = KcoreRemovals()
    stats: list[dict[str, int]] = []
    known_users: frozenset[str] = frozenset()
    known_items: frozenset[str] = frozenset()
    for r in range(1, max_rounds + 1):
        counts = count(removals)
        if r == 1:  # the keys with training-period events; every other key is new and stays
            known_users = frozenset(counts.loc[counts["kind"] == "user", "key"])
            known_items = frozenset(counts.loc[counts["kind"] == "item", "key"])
        users = _below(counts, "user", known_users, removals.users, min_user_events)
        items = _below(counts, "item", known_items, removals.items, min_item_events)
        if not users and not items:
            break
        on_round(f"k-core round {r}: {len(users)} users, {len(items)} items below threshold in the training period")
        removals.users.update(dict.fromkeys(users, r))
        removals.items.update(dict.fromkeys(items, r))
        stats.append({"round": r, "users_removed": len(users), "items_removed": len(items)})
    return removals, stats


def tag_removed(df: pd.DataFrame, removals: KcoreRemovals, min_user_events: int, min_item_events: int) -> pd.DataFrame:
    """Adds ``kcore_round`` (0: kept) and, on removed rows, ``reason_code`` and ``reason``.

    A row removed by its user and its item in the same round is put down to its user.
    """
    rounds = removals.rounds(df)
    by_user = removals.user_rounds(df) == rounds
    # Few distinct (round, cause) pairs: word each once and map, rather than per row.
    cause = pd.Series(np.where(rounds == 0, 0, rounds * 2 + by_user), index=df.index)
    words = {c: _reason(c // 2, bool(c % 2), min_user_events, min_item_events) for c in cause.unique() if c}
    code = np.where(rounds == 0, None, np.where(by_user, REASON_USER, REASON_ITEM))
    return df.assign(**{KCORE_ROUND: rounds, REASON_CODE: code, REASON: cause.map(words)})


def _reason(kcore_round: int, by_user: bool, min_user_events: int, min_item_events: int) -> str:
    what, field_name, k = ("user", "min_user_events", min_user_events) if by_user else ("item", "min_item_events", min_item_events)
    return (f"k-core round {kcore_round}: the {what} has fewer than preprocess.{field_name}={k} "
            "interactions in the training period")


def round_stats(stats: list[dict[str, int]], events_by_round: dict[int, int]) -> list[dict[str, int]]:
    """The rounds' stats with ``events_removed``, as counted from the filtered rows."""
    return [{**s, "events_removed": int(events_by_round.get(s["round"], 0))} for s in stats]
