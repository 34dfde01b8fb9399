"""rayrec.train.evaluate on a hand-made processed folder: the cutoff state, targets, top-k masking,
the evaluation loop and its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from rayrec.train.evaluate import EvalSplit, Recommender, evaluate, load_eval_split, topk_excluding, write_report
from rayrec.train.systems import subset_users

DAY = 86_400_000
VIEW, CLICK, CART, BUY = 0, 1, 2, 3
# (user_idx, item_idx, day, split, stage). Items 2..7 (n_items 8), users 2..7 (n_users 8).
# Train counts: item2 4, item5 3, item3 2, item4 1, item6 1, item7 0.
EVENTS: list[tuple[int, int, float, int, int]] = [
    (2, 2, 1.0, 0, VIEW), (2, 3, 2.0, 0, CLICK), (2, 2, 3.0, 0, CLICK),
    (3, 2, 1.0, 0, VIEW), (3, 3, 2.0, 0, BUY),
    (4, 2, 4.0, 0, CLICK), (4, 4, 5.0, 0, VIEW),
    (5, 5, 9.0, 0, VIEW), (5, 5, 9.5, 0, VIEW), (5, 5, 9.6, 0, CLICK),  # item5: recently popular
    (6, 6, 2.0, 0, CLICK),
    # valid, from day 11: u4 only views (no target); u5 and u7 absent
    (2, 4, 11.0, 1, VIEW), (2, 5, 11.5, 1, CLICK),
    (3, 4, 11.0, 1, CLICK),
    (4, 7, 11.2, 1, VIEW),
    (6, 3, 12.0, 1, CART),
    # test, from day 13: u7 is new (no interactions before the cutoff)
    (2, 6, 13.0, 2, BUY), (2, 7, 13.5, 2, VIEW),
    (3, 5, 13.2, 2, CLICK),
    (4, 6, 13.1, 2, CLICK),
    (5, 7, 14.0, 2, CLICK),
    (7, 2, 14.0, 2, CLICK),
]  # fmt: skip


def write_processed(root: Path, events=EVENTS, n_users: int = 8, n_items: int = 8) -> Path:
    """A minimal `rayrec preprocess` output: events/ (exact schema, hist lists filled), items.parquet,
    vocab/items.json and manifest.json."""
    rows = sorted(events, key=lambda e: (e[0], e[2]))
    hist: dict[int, list[tuple[int, int, int]]] = {}
    cols: dict[str, list] = {k: [] for k in ("user_idx", "item_idx", "ts_ms", "split", "stage", "session_id",
                                             "hist_items", "hist_types", "hist_gaps_s")}
    for u, i, day, split, stage in rows:
        ts = int(day * DAY)
        past = hist.setdefault(u, [])[-20:]
        for k, v in zip(cols, (u, i, ts, split, stage, f"s{u}", [p[0] for p in past], [p[1] for p in past],
                               [(ts - p[2]) / 1000 for p in past])):
            cols[k].append(v)
        hist[u].append((i, stage, ts))
    schema = pa.schema([("user_idx", pa.int32()), ("item_idx", pa.int32()), ("ts_ms", pa.int64()),
                        ("split", pa.int8()), ("stage", pa.int8()), ("session_id", pa.string()),
                        ("hist_items", pa.list_(pa.int32())), ("hist_types", pa.list_(pa.int8())),
                        ("hist_gaps_s", pa.list_(pa.float32()))])
    (root / "events").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=schema), root / "events" / "part-0.parquet")
    train_counts = np.bincount([e[1] for e in events if e[3] == 0], minlength=n_items)
    pq.write_table(pa.table({"item_idx": pa.array(range(2, n_items), pa.int32()),
                             "train_interactions": pa.array(train_counts[2:], pa.int64())}),
                   root / "items.parquet")
    (root / "vocab").mkdir()
    values = ["<pad>", "<unk>", *(f"I{i}" for i in range(2, n_items))]
    (root / "vocab" / "items.json").write_text(json.dumps({"name": "items", "values": values}))
    (root / "manifest.json").write_text(json.dumps({"vocab_sizes": {"users": n_users, "items": n_items},
                                                    "history_length": 20}))
    return root


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    return write_processed(tmp_path / "processed")


def row_of(split: EvalSplit, user: int) -> int:
    return int(np.flatnonzero(split.users == user)[0])


def test_valid_split_state_at_the_cutoff(processed):
    s = load_eval_split(processed, "valid", history_length=4)
    assert s.cutoff_ms == 11 * DAY and s.min_stage == 1
    # u4 only viewed in valid (no target), u5/u7 did nothing: not evaluated
    np.testing.assert_array_equal(s.users, [2, 3, 6])
    r = row_of(s, 2)  # u2 before day 11: 2 (view), 3 (click), 2 (click): right-aligned, oldest first
    np.testing.assert_array_equal(s.history_items[r], [0, 2, 3, 2])
    np.testing.assert_array_equal(s.history_types[r], [0, VIEW, CLICK, CLICK])
    np.testing.assert_allclose(s.history_gaps[r], [0, 10 * 86400, 9 * 86400, 8 * 86400])
    assert (s.history_gaps[s.history_items != 0] > 0).all()  # strictly before the cutoff
    assert set(s.targets[r].indices) == {5}  # the view of item 4 is no target
    assert set(s.targets[row_of(s, 3)].indices) == {4} and set(s.targets[row_of(s, 6)].indices) == {3}
    assert set(s.seen[r].indices) == {2, 3}
    np.testing.assert_array_equal(s.item_popularity, [0, 0, 4, 2, 1, 3, 1, 0])
    assert s.interactions.shape == (8, 8) and s.interactions.sum() == 11  # train only
    assert (s.prior.ts_ms < s.cutoff_ms).all()


def test_test_split_history_includes_valid(processed):
    s = load_eval_split(processed, "test", history_length=3)
    assert s.cutoff_ms == 13 * DAY
    np.testing.assert_array_equal(s.users, [2, 3, 4, 5, 7])
    r = row_of(s, 2)  # u2 before day 13: 2, 3, 2, 4, 5 -> the last three
    np.testing.assert_array_equal(s.history_items[r], [2, 4, 5])
    assert set(s.seen[r].indices) == {2, 3, 4, 5}
    assert set(s.targets[r].indices) == {6}  # item 7 was only viewed
    np.testing.assert_array_equal(s.history_items[row_of(s, 7)], [0, 0, 0])  # new user: all padding
    assert s.seen[row_of(s, 7)].nnz == 0
    assert s.interactions.sum() == 16  # train + valid
    np.testing.assert_array_equal(s.item_popularity, [0, 0, 4, 2, 1, 3, 1, 0])  # still train counts


def test_min_stage_falls_back_to_every_interaction(processed):
    s = load_eval_split(processed, "valid", history_length=2, min_stage=BUY)  # no purchase in valid
    assert s.min_stage == 0
    np.testing.assert_array_equal(s.users, [2, 3, 4, 6])
    assert set(s.targets[row_of(s, 2)].indices) == {4, 5}


def test_topk_excluding_masks_reserved_and_seen():
    scores = np.array([[9.0, 8.0, 1.0, 5.0, 5.0, 3.0], [9.0, 9.0, np.nan, 2.0, 7.0, 1.0]])
    seen = sp.csr_matrix(np.array([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1]]))
    before = scores.copy()
    np.testing.assert_array_equal(topk_excluding(scores, seen, 3, exclude_seen=False), [[3, 4, 5], [4, 3, 5]])
    # u0: 3 is seen; u1: 4 and 5 seen, 2 is NaN -> only item 3 is left, then -1 padding
    np.testing.assert_array_equal(topk_excluding(scores, seen, 3, exclude_seen=True, batch_size=1),
                                  [[4, 5, 2], [3, -1, -1]])
    np.testing.assert_array_equal(scores, before)  # the caller's scores are untouched
    np.testing.assert_array_equal(topk_excluding(scores, seen, 8, exclude_seen=False)[0],
                                  [3, 4, 5, 2, -1, -1, -1, -1])


class Fixed:
    """A stub system: the same ranked list for every user (seen items removed)."""

    def __init__(self, name: str, order: list[int]) -> None:
        self.name, self.order, self.fitted = name, np.array(order, dtype=float), False

    def fit(self, split: EvalSplit) -> None:
        self.fitted = True

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        scores = np.zeros((len(split.users), split.n_items))
        scores[:, self.order.astype(int)] = np.arange(len(self.order), 0, -1)
        return topk_excluding(scores, split.seen, k, exclude_seen)


def test_evaluate_one_row_per_system_and_report(processed, tmp_path):
    s = load_eval_split(processed, "test", history_length=4)
    systems = [Fixed("a", [6, 5, 7, 2]), Fixed("b", [3, 4])]
    assert all(isinstance(x, Recommender) for x in systems)
    df = evaluate(systems, s, ks=(1, 3))
    assert list(df["system"]) == ["a", "b"] and all(x.fitted for x in systems)
    for col in ("recall@1", "ndcg@1", "hit@1", "coverage@1", "arp@1", "recall@3", "ndcg@3", "hit@3",
                "coverage@3", "arp@3", "mrr", "fit_s", "recommend_s", "users"):
        assert col in df.columns, col
    assert (df["users"] == 5).all()
    # "a" at K=1: u2 -> 6 (hit), u3 -> 6 (T={5}), u4 -> 6 (hit), u5 -> 6 (seen 5; T={7}), u7 -> 6
    assert df.loc[0, "recall@1"] == pytest.approx(2 / 5)
    per_user = df.attrs["per_user"]  # at the largest K here (no 20): one value per judged user
    assert set(per_user) == {"a", "b"} and len(per_user["a"]["recall@3"]) == 5
    for i, name in enumerate(("a", "b")):
        for metric in ("recall@3", "ndcg@3"):
            assert per_user[name][metric].mean() == pytest.approx(df.loc[i, metric])

    paths = write_report(df, tmp_path / "report", "tiny", notes="hand-made data")
    assert paths["png"].stat().st_size > 1000
    md = paths["markdown"].read_text()
    assert "| a |" in md and "recall@3" in md and "hand-made data" in md
    assert [r["system"] for r in json.loads(paths["json"].read_text())["rows"]] == ["a", "b"]


def test_evaluate_reports_each_user_segment_on_its_own(processed, tmp_path):
    s = load_eval_split(processed, "test", history_length=4)
    first = np.arange(len(s.users)) < 2
    df = evaluate([Fixed("a", [6, 5, 7, 2])], s, ks=(1,), segments={"first two": first, "rest": ~first})
    alone = [evaluate([Fixed("a", [6, 5, 7, 2])], subset_users(s, np.flatnonzero(m)), ks=(1,)) for m in (first, ~first)]
    for name, part in zip(("first two", "rest"), alone):
        for metric in ("recall@1", "ndcg@1"):
            assert df.loc[0, f"{metric} ({name})"] == pytest.approx(part.loc[0, metric])
    assert df.loc[0, "recall@1 (first two)"] != df.loc[0, "recall@1 (rest)"]
    paths = write_report(df, tmp_path, "segments")
    assert "recall@1 (rest)" in paths["markdown"].read_text() and paths["png"].stat().st_size > 1000


def test_evaluate_rejects_contract_breaches(processed):
    s = load_eval_split(processed, "test", history_length=4)

    class Cheater(Fixed):
        def recommend(self, split, k, exclude_seen):
            return np.tile(np.arange(2, 2 + k), (len(split.users), 1))  # ignores seen

    with pytest.raises(ValueError, match="already seen"):
        evaluate([Cheater("c", [])], s, ks=(2,))

    class Reserved(Fixed):
        def recommend(self, split, k, exclude_seen):
            return np.ones((len(split.users), k), dtype=int)

    with pytest.raises(ValueError, match="reserved"):
        evaluate([Reserved("r", [])], s, ks=(2,), exclude_seen=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(3, 9), st.integers(1, 10), st.data())
def test_topk_excluding_matches_a_full_sort(n_users, n_items, k, data):
    # Integer scores make ties common: the reference ranks by (score desc, id asc) over eligible ids.
    scores = np.array(data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=n_items, max_size=n_items),
                                         min_size=n_users, max_size=n_users)), dtype=float)
    mask = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=n_items, max_size=n_items),
                                       min_size=n_users, max_size=n_users)))
    got = topk_excluding(scores, sp.csr_matrix(mask), k, exclude_seen=True, batch_size=2)
    for u in range(n_users):
        eligible = [i for i in range(2, n_items) if not mask[u, i]]
        ref = sorted(eligible, key=lambda i: (-scores[u, i], i))[:k]
        np.testing.assert_array_equal(got[u], ref + [-1] * (k - len(ref)))
