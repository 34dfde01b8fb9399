"""Per-user example building on a hand-made log whose expected outputs are worked out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from rayrec.data.examples import ExampleSpec, build_user_examples, mark_duplicates, split_of, user_bucket

T0 = 1_700_000_000_000
S = 1000  # one second in ms


def _events(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts_ms", "session_id", "query"])
    df["price"] = np.nan
    df["quantity"] = np.nan
    df["source_file"] = "f"
    df["source_row"] = np.arange(len(df))
    return df


LOG = _events([
    ("u1", "", "search", T0, "s1", "red kettle"),
    ("u1", "i1", "view", T0 + 1 * S, "s1", ""),
    ("u1", "i2", "view", T0 + 2 * S, "s1", ""),
    ("u1", "i2", "click", T0 + 3 * S, "s1", ""),
    ("u1", "i2", "add_to_cart", T0 + 4 * S, "s1", ""),
    ("u1", "", "search", T0 + 5 * S, "s1", "nothing clicked after"),
    ("u1", "", "search", T0 + 100 * S, "s2", "mug"),
    ("u1", "i3", "click", T0 + 101 * S, "s2", ""),
    ("u2", "i3", "view", T0 + 50 * S, "s9", ""),
    ("u2", "i1", "purchase", T0 + 200 * S, "s9", ""),
])  # fmt: skip

SPEC = ExampleSpec(
    users=pd.Index(["<pad>", "<unk>", "u1", "u2"]), items=pd.Index(["<pad>", "<unk>", "i1", "i2", "i3", "i4", "i5"]),
    tokens=pd.Index(["<pad>", "<unk>", "kettle", "mug", "red"]), cutoffs_ms=(T0 + 60 * S, T0 + 150 * S),
    history_length=2, random_negatives=2, seed=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def examples() -> pd.DataFrame:
    return build_user_examples(LOG.sample(frac=1, random_state=3), SPEC).to_pandas()


def test_event_rows_carry_strictly_earlier_history(examples):
    ev = examples[examples.kind == "event"].reset_index(drop=True)
    assert len(ev) == 7  # interactions only
    u1 = ev[ev.user_idx == 2]
    assert u1.item_idx.tolist() == [2, 3, 3, 3, 4]
    assert [list(h) for h in u1.hist_items] == [[], [2], [2, 3], [3, 3], [3, 3]]
    assert [list(h) for h in u1.hist_types][-1] == [1, 2]  # click, add_to_cart
    assert list(u1.hist_gaps_s.iloc[1]) == [1.0]
    u2 = ev[ev.user_idx == 3]
    assert [list(h) for h in u2.hist_items] == [[], [4]]  # never sees u1's events


def test_history_gap_ends_history_before_the_visit():
    """With a 60 s gap an example's history is the L events at least 60 s before it: the funnel
    steps of its own visit are left out and older events take their place."""
    spec = dataclasses.replace(SPEC, history_gap_s=60)
    out = build_user_examples(LOG, spec).to_pandas()
    ev = out[out.kind == "event"]
    u1 = ev[ev.user_idx == 2].sort_values("ts_ms")
    assert [list(h) for h in u1.hist_items] == [[], [], [], [], [3, 3]]  # i3 at +101 s: i2's click and cart
    assert list(u1.hist_gaps_s.iloc[-1]) == [98.0, 97.0]
    u2 = ev[ev.user_idx == 3].sort_values("ts_ms")
    assert [list(h) for h in u2.hist_items] == [[], [4]]  # 150 s apart: kept
    rk = out[(out.kind == "ranking") & (out.negative == "")].set_index(["user_idx", "item_idx"])
    assert list(rk.loc[(2, 3), "hist_items"]) == []  # the view of i2 two seconds before its click: same visit
    assert list(rk.loc[(2, 4), "hist_items"]) == [3, 3]
    se = out[out.kind == "search"].sort_values("ts_ms")
    assert list(se.hist_items.iloc[-1]) == [3, 3]  # searches keep everything before them


def test_splits_follow_the_cutoffs(examples):
    ev = examples[examples.kind == "event"]
    assert ev.sort_values("ts_ms").split.tolist() == [0, 0, 0, 0, 0, 1, 2]
    assert split_of(np.array([T0 + 60 * S - 1, T0 + 60 * S, T0 + 150 * S]), SPEC.cutoffs_ms).tolist() == [0, 1, 2]


def test_ranking_labels_come_from_the_deepest_funnel_stage(examples):
    rk = examples[examples.kind == "ranking"]
    real = rk[rk.negative != "random"].set_index(["user_idx", "item_idx"])
    assert real.loc[(2, 2), "negative"] == "viewed" and real.loc[(2, 2), "label_click"] == 0
    assert real.loc[(2, 3), ["label_click", "label_cart", "label_purchase"]].tolist() == [1, 1, 0]
    assert real.loc[(3, 2), "label_purchase"] == 1
    rnd = rk[rk.negative == "random"]
    assert len(rnd) == 3 * SPEC.random_negatives  # 3 positives: (u1,i2), (u1,i3), (u2,i1)
    assert (rnd[["label_click", "label_cart", "label_purchase"]] == 0).all().all()
    assert rnd.item_idx.between(2, 6).all()
    for _, row in rnd.iterrows():  # never the positive it was drawn for
        positive = rk[(rk.negative == "") & (rk.user_idx == row.user_idx) & (rk.ts_ms == row.ts_ms)]
        assert row.item_idx not in positive.item_idx.tolist()


def test_search_pairs_with_next_click_in_session_before_next_search(examples):
    se = examples[examples.kind == "search"].sort_values("ts_ms")
    assert se["query"].tolist() == ["red kettle", "mug"]
    assert se.item_idx.tolist() == [3, 4]
    assert [list(t) for t in se.query_tokens] == [[4, 2], [3]]
    assert [list(h) for h in se.hist_items] == [[], [3, 3]]


def test_examples_do_not_depend_on_row_order():
    a = build_user_examples(LOG, SPEC).to_pandas()
    b = build_user_examples(LOG.iloc[::-1], SPEC).to_pandas()
    pd.testing.assert_frame_equal(a, b)


def test_duplicates_marked_keep_first_and_buckets_are_stable():
    log = pd.concat([LOG, LOG.iloc[[3]].assign(source_row=99)], ignore_index=True)
    marked = mark_duplicates(log)
    assert marked.is_duplicate.sum() == 1
    assert marked.loc[marked.is_duplicate, "source_row"].tolist() == [99]
    assert user_bucket(pd.Series(["u1", "u2", "u1"]), 8).tolist()[0] == user_bucket(pd.Series(["u1"]), 8)[0]
