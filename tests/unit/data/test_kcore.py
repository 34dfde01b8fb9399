"""The training-period k-core rule (rayrec.data.kcore), on hand-made logs with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayrec.data.kcore import REASON_ITEM, REASON_USER, KcoreRemovals, iterate_kcore, tag_removed, train_counts

T1 = 1_000  # the first split cutoff: ts < T1 is the training period


def _log(rows: list[tuple[str, str, int]], event_type: str = "click") -> pd.DataFrame:
    return pd.DataFrame({"user_id": [u for u, _, _ in rows], "item_id": [i for _, i, _ in rows],
                         "event_type": event_type, "ts_ms": np.array([t for _, _, t in rows], np.int64)})


def _kcore(df: pd.DataFrame, k: int = 2, rounds: int = 10) -> tuple[KcoreRemovals, list[dict[str, int]]]:
    return iterate_kcore(lambda removed: train_counts(df, T1, removed), k, k, rounds)


def _core(users: list[str], items: list[str], n: int = 2) -> list[tuple[str, str, int]]:
    """Every user × item once, n times over, in the training period: a core nothing is removed from."""
    return [(u, i, 100 + r) for u in users for i in items for r in range(n)]


def test_sparse_in_training_is_removed_however_busy_later():
    core = _core(["a", "b"], ["x", "y"])
    later = [("busy_later", "x", T1 + t) for t in range(10)] + [("a", "sparse", T1 + t) for t in range(10)]
    df = _log([*core, ("busy_later", "y", 10), ("b", "sparse", 20), *later])
    removals, stats = _kcore(df)
    # The old rule counted the whole log: 11 events each, both kept. Here one training event each.
    assert removals.users == {"busy_later": 1} and removals.items == {"sparse": 1}
    assert stats == [{"round": 1, "users_removed": 1, "items_removed": 1}]
    rounds = removals.rounds(df)
    assert (rounds[df["user_id"].eq("busy_later") | df["item_id"].eq("sparse")] == 1).all()
    assert (rounds[~(df["user_id"].eq("busy_later") | df["item_id"].eq("sparse"))] == 0).all()


def test_new_users_and_items_of_the_later_periods_are_kept():
    core = _core(["a", "b"], ["x", "y"])
    # One event each, after the cutoff: far below k, but nothing is known of them in training.
    df = _log([*core, ("newbie", "x", T1 + 5), ("a", "new_item", T1 + 6)])
    removals, stats = _kcore(df, k=2)
    assert removals.users == {} and removals.items == {} and stats == []
    assert (removals.rounds(df) == 0).all()


def _orphan_log() -> pd.DataFrame:
    """"c"'s four training events are on two items with too few (k=3): round 1 removes them, which
    leaves "c" none in training."""
    rare = [("c", item, 10 + t) for item in ("rare1", "rare2") for t in range(2)]
    return _log([*_core(["a", "b"], ["x", "y"]), *rare, ("c", "x", T1 + 1)])


def test_rounds_repeat_on_the_training_counts_and_orphans_are_not_new():
    df = _orphan_log()
    removals, stats = _kcore(df, k=3)
    # "c" had training events, so it is not new: round 2 removes it, its later event too.
    assert removals.items == {"rare1": 1, "rare2": 1} and removals.users == {"c": 2}
    assert stats == [{"round": 1, "users_removed": 0, "items_removed": 2},
                     {"round": 2, "users_removed": 1, "items_removed": 0}]
    assert removals.rounds(df)[-1] == 2


def test_max_rounds_stops_the_iteration():
    removals, stats = _kcore(_orphan_log(), k=3, rounds=1)
    assert [s["round"] for s in stats] == [1] and removals.users == {}


def test_decisions_do_not_depend_on_the_later_periods():
    rng = np.random.default_rng(0)

    def random_rows(n: int, lo: int, hi: int) -> list[tuple[str, str, int]]:
        return [(f"u{rng.integers(40)}", f"i{rng.integers(30)}", int(rng.integers(lo, hi))) for _ in range(n)]

    train = random_rows(160, 0, T1)
    base, _ = _kcore(_log([*train, *random_rows(50, T1, 2 * T1)]), k=4)
    other, _ = _kcore(_log([*train, *random_rows(500, T1, 3 * T1)]), k=4)
    assert base.users and base.items  # the log is sparse enough for some removals
    assert base == other


def test_searches_are_judged_by_their_user_only():
    core = _core(["a", "b"], ["x", "y"])
    searches = _log([("a", "", 50), ("gone", "", 60), ("gone", "", T1 + 1)], event_type="search")
    df = pd.concat([_log(core), searches], ignore_index=True)
    removals, _ = _kcore(df)
    # "gone" searched in training but never interacted there: 0 interactions, removed.
    assert removals.users == {"gone": 1}
    assert removals.rounds(df).tolist()[-3:] == [0, 1, 1]


def test_tag_removed_names_round_and_cause():
    df = _log([("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("c", "z", 4)])
    removals = KcoreRemovals(users={"a": 2, "c": 1}, items={"x": 1, "z": 1})
    tagged = tag_removed(df, removals, min_user_events=3, min_item_events=4)
    assert tagged["kcore_round"].tolist() == [1, 2, 1, 1]
    # a same-round tie goes to the user
    assert tagged["reason_code"].tolist() == [REASON_ITEM, REASON_USER, REASON_ITEM, REASON_USER]
    assert tagged.loc[1, "reason"] == ("k-core round 2: the user has fewer than preprocess.min_user_events=3 "
                                       "interactions in the training period")
    assert "min_item_events=4" in tagged.loc[0, "reason"]
    kept = tag_removed(df, KcoreRemovals(), 3, 3)
    assert kept["kcore_round"].eq(0).all() and kept["reason_code"].isna().all() and kept["reason"].isna().all()
