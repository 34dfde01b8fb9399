"""rayrec.metrics against hand-computed values on tiny rankings, plus properties on random ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from rayrec.metrics import (first_occurrence, membership, paired_ratio_interval, popularity_percentile,
                            ranking_metrics, user_metrics, user_ndcg)


def targets_of(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def test_single_user_by_hand():
    # T = {2, 5, 7}; ranking 5, 3, 7, 4, 2 -> hits at ranks 1, 3, 5.
    m = ranking_metrics(np.array([[5, 3, 7, 4, 2]]), targets_of([[2, 5, 7]], 8), ks=(1, 3, 5))
    assert m["recall@1"] == pytest.approx(1 / 3)  # 1 hit of 3 targets
    assert m["recall@3"] == pytest.approx(2 / 3)  # ranks 1 and 3
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1.0)  # DCG = IDCG = 1/log2(2)
    # DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; IDCG@3 (min(|T|,3) = 3) = 1 + 1/log2(3) + 1/log2(4)
    idcg3 = 1 + 1 / math.log2(3) + 0.5
    assert m["ndcg@3"] == pytest.approx(1.5 / idcg3)  # = 0.70392
    # DCG@5 adds 1/log2(6) for the hit at rank 5; IDCG stays at 3 terms since |T| = 3
    assert m["ndcg@5"] == pytest.approx((1.5 + 1 / math.log2(6)) / idcg3)  # = 0.88546
    assert m["hit@1"] == m["hit@3"] == 1.0
    assert m["mrr"] == pytest.approx(1.0)  # first hit at rank 1
    assert m["users"] == 1


def test_two_users_padding_and_a_user_without_targets_by_hand():
    # n_items 7 -> real items 2..6 (5 of them). u0: T={3}, u1: T={2,6} with -1 padding,
    # u2: no targets -> excluded from every average, its item 5 counts for nothing.
    topk = np.array([[2, 4, 3], [6, -1, -1], [5, 5, 5]])
    targets = targets_of([[3], [2, 6], []], 7)
    # popularity of items 0..6; real items 2..6 have 10, 40, 20, 30, 0 -> ranks 2, 5, 3, 4, 1
    # -> percentile (rank-1)/4: item2 .25, item3 1.0, item4 .5, item5 .75, item6 0.0
    pop = np.array([9, 9, 10, 40, 20, 30, 0])
    m = ranking_metrics(topk, targets, ks=(1, 3), item_popularity=pop)
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((0 + 1 / 2) / 2)  # u0 misses at 1, u1 hits 6
    assert m["recall@3"] == pytest.approx((1 + 1 / 2) / 2)  # u0 hits 3 at rank 3
    assert m["ndcg@1"] == pytest.approx((0 + 1) / 2)
    # u0: DCG = 1/log2(4) = .5, IDCG = 1 -> .5; u1: DCG = 1, IDCG = 1 + 1/log2(3) (|T| = 2)
    assert m["ndcg@3"] == pytest.approx((0.5 + 1 / (1 + 1 / math.log2(3))) / 2)  # = 0.55657
    assert m["hit@1"] == pytest.approx(0.5)
    assert m["hit@3"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["coverage@1"] == pytest.approx(2 / 5)  # {2, 6}
    assert m["coverage@3"] == pytest.approx(4 / 5)  # {2, 4, 3, 6}; -1 is no item
    assert m["arp@1"] == pytest.approx((0.25 + 0.0) / 2)
    assert m["arp@3"] == pytest.approx(((0.25 + 0.5 + 1.0) / 3 + 0.0) / 2)  # u1's only real item: 6


def test_user_ndcg_is_each_judged_users_value_of_the_mean():
    topk = np.array([[2, 4, 3], [6, -1, -1], [5, 5, 5]])
    targets = targets_of([[3], [2, 6], []], 7)
    per_user = user_ndcg(topk, targets, 3)
    # as in the test above: u0 .5, u1 1 / (1 + 1/log2(3)); u2 has no target and no value
    assert per_user == pytest.approx([0.5, 1 / (1 + 1 / math.log2(3))])
    assert per_user.mean() == pytest.approx(ranking_metrics(topk, targets, ks=(3,))["ndcg@3"])
    assert user_ndcg(topk, targets, 1) == pytest.approx([0.0, 1.0])
    recall = user_metrics(topk, targets, 3)["recall@3"]
    assert recall == pytest.approx([1.0, 0.5])  # u1 found 6 of {2, 6}
    assert recall.mean() == pytest.approx(ranking_metrics(topk, targets, ks=(3,))["recall@3"])


def test_paired_ratio_interval_brackets_the_ratio_and_narrows_with_more_users():
    rng = np.random.default_rng(1)
    theirs = rng.random(200)
    ours = theirs * 1.2 + rng.normal(0, 0.05, 200)
    lo, hi = paired_ratio_interval(ours, theirs)
    assert lo < ours.mean() / theirs.mean() < hi and 1.1 < lo and hi < 1.3
    wide = paired_ratio_interval(ours[:20], theirs[:20])
    assert wide[1] - wide[0] > hi - lo
    # pairing: a per-user shift shared by both systems does not widen the interval of their ratio
    shared = rng.random(200) * 5
    lo_shared, hi_shared = paired_ratio_interval(ours + shared, theirs + shared)
    assert hi_shared - lo_shared < 0.05
    with pytest.raises(ValueError, match="equal-length"):
        paired_ratio_interval(ours, theirs[:10])


def test_repeated_ids_count_once_and_reserved_ids_never_hit():
    # T = {2}; 2 repeated thrice is one hit, not three. Ids 0/1 are never relevant even if marked.
    m = ranking_metrics(np.array([[2, 2, 2]]), targets_of([[2]], 4), ks=(3,))
    assert m["recall@3"] == 1.0 and m["ndcg@3"] == 1.0
    assert m["coverage@3"] == pytest.approx(1 / 2)  # one of real items {2, 3}
    m = ranking_metrics(np.array([[1, 0, 3]]), targets_of([[1, 3]], 4), ks=(1, 3))
    assert m["hit@1"] == 0.0 and m["recall@3"] == pytest.approx(1 / 2)
    assert m["mrr"] == pytest.approx(1 / 3)


def test_popularity_percentile_averages_ties():
    # real items 2, 3, 4 with 5, 5, 1 -> ranks 2.5, 2.5, 1 -> (rank-1)/2 = .75, .75, 0
    pct = popularity_percentile(np.array([0, 0, 5, 5, 1]))
    assert np.isnan(pct[:2]).all()
    np.testing.assert_allclose(pct[2:], [0.75, 0.75, 0.0])


def test_helpers_and_errors():
    np.testing.assert_array_equal(first_occurrence(np.array([[3, 2, 3, -1, -1]])),
                                  [[True, True, False, True, False]])
    np.testing.assert_array_equal(membership(np.array([[2, 3, -1], [3, 9, 2]]), targets_of([[3], [2]], 5)),
                                  [[False, True, False], [False, False, True]])
    with pytest.raises(ValueError, match="1..2"):
        ranking_metrics(np.array([[2, 3]]), targets_of([[2]], 4), ks=(5,))
    empty = ranking_metrics(np.zeros((1, 2), dtype=int), targets_of([[]], 4), ks=(2,))
    assert empty["users"] == 0 and empty["recall@2"] == 0.0


@st.composite
def rankings(draw):
    n_items = draw(st.integers(3, 12))
    n_users = draw(st.integers(1, 6))
    kmax = draw(st.integers(1, n_items - 2))
    real = list(range(2, n_items))
    topk, targets = [], []
    for _ in range(n_users):
        row = draw(st.permutations(real))[:kmax]
        n_pad = draw(st.integers(0, kmax))
        topk.append(row[: kmax - n_pad] + [-1] * n_pad)
        targets.append(sorted(draw(st.sets(st.sampled_from(real), max_size=len(real)))))
    pop = draw(st.lists(st.integers(0, 50), min_size=n_items, max_size=n_items))
    return np.array(topk), targets, n_items, kmax, np.array(pop)


@settings(max_examples=150, deadline=None)
@given(rankings())
def test_properties(case):
    topk, targets, n_items, kmax, pop = case
    ks = tuple(range(1, kmax + 1))
    m = ranking_metrics(topk, targets_of(targets, n_items), ks=ks, item_popularity=pop)
    for name, value in m.items():
        if name != "users":
            assert 0.0 <= value <= 1.0 + 1e-12, name
    recalls = [m[f"recall@{k}"] for k in ks]
    hits = [m[f"hit@{k}"] for k in ks]
    assert recalls == sorted(recalls) and hits == sorted(hits)  # monotone in K
    assert all(m[f"ndcg@{k}"] <= m[f"hit@{k}"] + 1e-12 for k in ks)
    assert m["mrr"] <= m[f"hit@{kmax}"] + 1e-12

    # A perfect ranking (every target first, then any other item): NDCG 1 at every K, MRR 1, and
    # recall 1 once K covers all targets.
    perfect = []
    for t in targets:
        rest = [i for i in range(2, n_items) if i not in t]
        perfect.append((t + rest)[:kmax])
    best = ranking_metrics(np.array(perfect), targets_of(targets, n_items), ks=ks)
    if best["users"]:
        assert all(best[f"ndcg@{k}"] == pytest.approx(1.0) for k in ks)
        assert best["mrr"] == pytest.approx(1.0)
        if max(len(t) for t in targets) <= kmax:
            assert best[f"recall@{kmax}"] == pytest.approx(1.0)
