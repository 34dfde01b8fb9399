"""The baselines on hand-made processed folders: popularity order, recency, co-occurrence, and
that the implicit models return valid ids of the right shape."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rayrec.metrics import membership
from rayrec.train.baselines import (
    ImplicitALS,
    ImplicitBPR,
    ItemKNN,
    MostPopular,
    RecentlyPopular,
    cosine_neighbors,
)
from rayrec.train.evaluate import Recommender, evaluate, load_eval_split
from tests.unit.train.test_evaluate import CLICK, VIEW, write_processed


@pytest.fixture
def processed(tmp_path):
    return write_processed(tmp_path / "processed")


def test_most_popular_is_the_popularity_order(processed):
    s = load_eval_split(processed, "valid", history_length=3)  # before valid = train counts
    top = MostPopular()
    top.fit(s)
    # train counts: 2:4, 5:3, 3:2, 4:1, 6:1, 7:0 (4 and 6 tie -> lower id first)
    all_rows = top.recommend(s, 6, exclude_seen=False)
    assert (all_rows == [2, 5, 3, 4, 6, 7]).all()
    u2 = int(np.flatnonzero(s.users == 2)[0])  # u2 had seen 2 and 3
    np.testing.assert_array_equal(top.recommend(s, 6, exclude_seen=True)[u2], [5, 4, 6, 7, -1, -1])


def test_recently_popular_prefers_the_window_then_overall(processed):
    s = load_eval_split(processed, "valid", history_length=3)
    recent = RecentlyPopular(window_days=2)  # days 9..11: only item 5 (3 events)
    recent.fit(s)
    assert (recent.recommend(s, 6, exclude_seen=False) == [5, 2, 3, 4, 6, 7]).all()


def co_occurrence_events():
    # Users 2..4 take items 2 and 3 together; users 5..8 take the popular item 4 (and 5).
    # User 9 has only touched item 2: ItemKNN must say 3, popularity would say 4.
    ev = [(u, i, 1.0 + 0.1 * i, 0, CLICK) for u in (2, 3, 4) for i in (2, 3)]
    ev += [(u, i, 2.0 + 0.1 * i, 0, CLICK) for u in (5, 6, 7, 8) for i in (4, 5)]
    ev += [(9, 2, 3.0, 0, VIEW), (9, 3, 5.0, 1, CLICK), (9, 6, 6.0, 2, CLICK)]
    return ev


def test_item_knn_recommends_the_co_occurring_item(tmp_path):
    root = write_processed(tmp_path / "p", events=co_occurrence_events(), n_users=10, n_items=7)
    s = load_eval_split(root, "valid", history_length=5)
    np.testing.assert_array_equal(s.users, [9])
    knn = ItemKNN(neighbors=2)
    knn.fit(s)
    assert knn.recommend(s, 1, exclude_seen=True)[0, 0] == 3
    pop = MostPopular()
    pop.fit(s)
    assert pop.recommend(s, 1, exclude_seen=True)[0, 0] == 4  # the contrast the crafted data makes


def test_cosine_neighbors_by_hand():
    # items 0..2; users: {0,1}, {0,1}, {1,2}. |0|=2, |1|=3, |2|=1 users.
    # cos(0,1) = 2/sqrt(2*3) = .8165, cos(1,2) = 1/sqrt(3*1) = .5774, cos(0,2) = 0
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 3, 1]], dtype=np.float32))
    full = cosine_neighbors(x, neighbors=2, block=2).toarray()
    expected = np.array([[0, 2 / 6**0.5, 0], [2 / 6**0.5, 0, 1 / 3**0.5], [0, 1 / 3**0.5, 0]])
    np.testing.assert_allclose(full, expected, rtol=1e-6)
    top1 = cosine_neighbors(x, neighbors=1).toarray()  # item 1 keeps only its nearer item 0
    np.testing.assert_allclose(top1[1], [2 / 6**0.5, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: ImplicitALS(factors=4, iterations=3),
                                  lambda: ImplicitBPR(factors=4, iterations=5)])
def test_implicit_models_return_valid_ids(processed, make):
    s = load_eval_split(processed, "test", history_length=3)
    model = make()
    assert isinstance(model, Recommender)
    model.fit(s)
    k = 4
    for exclude in (True, False):
        top = model.recommend(s, k, exclude_seen=exclude)
        assert top.shape == (len(s.users), k)
        real = top[top != -1]
        assert ((real >= 2) & (real < s.n_items)).all()
        if exclude:
            assert not membership(top, s.seen).any()
    # u7 has no interaction before the cutoff: implicit knows nothing of it -> popularity
    pop = MostPopular()
    pop.fit(s)
    u7 = int(np.flatnonzero(s.users == 7)[0])
    np.testing.assert_array_equal(model.recommend(s, k, True)[u7], pop.recommend(s, k, True)[u7])


def test_all_baselines_evaluate(processed):
    s = load_eval_split(processed, "test", history_length=3)
    systems = [MostPopular(), RecentlyPopular(), ItemKNN(neighbors=3), ImplicitALS(factors=4, iterations=2),
               ImplicitBPR(factors=4, iterations=2)]
    df = evaluate(systems, s, ks=(1, 3))
    assert len(df) == 5 and df["system"].is_unique
    assert df[[c for c in df.columns if "@" in c or c == "mrr"]].apply(lambda c: c.between(0, 1)).all().all()


def test_every_configurable_baseline_is_runnable():
    from typing import get_args

    from rayrec.config import Baseline
    from rayrec.train.offline import BASELINES

    assert set(BASELINES) == set(get_args(Baseline))
