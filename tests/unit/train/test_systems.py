"""rayrec.train.systems: the one-standard-error rule that picks the ranker's trend boost, and the cut of
the validation users into the halves that choose and judge."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rayrec.config import load_config
from rayrec.models.ranker import Ranker, RankerSpec
from rayrec.train.evaluate import EvalSplit
from rayrec.train.systems import choose_and_judge, fit_boosts, in_judge_half, smallest_within_one_se, subset_users
from tests.unit.models.conftest import N_ITEMS, items  # noqa: F401  (the fixture)


def test_a_clear_gain_moves_the_choice_up():
    # every user gains 0.1 at 1.0: the deficit of 0.0 is 0.1 with no spread, far beyond its standard error
    base = np.linspace(0, 0.5, 50)
    assert smallest_within_one_se({0.0: base, 1.0: base + 0.1, 2.0: base + 0.05}) == 1.0


def test_a_gain_inside_the_noise_keeps_the_smaller_key():
    # at 1.0, 3 of 40 users gain a hit and 2 lose one: mean deficit of 0.0 is 0.025, its standard error
    # sqrt((5 - 40 * 0.025**2) / 39 / 40) ≈ 0.056, so 0.0 is within one standard error and is kept
    assert smallest_within_one_se({0.0: np.zeros(40), 1.0: _hits(40, gained=3, lost=2)}) == 0.0
    # the same shares of 400 users: standard error ≈ 0.018 < 0.025, a clear gain
    assert smallest_within_one_se({0.0: np.zeros(400), 1.0: _hits(400, gained=30, lost=20)}) == 1.0


def test_the_smallest_of_several_keys_within_the_noise_wins():
    # 0.5 trails the best (1.0) by 0.001 on average with a spread of 0.1 per user (standard error ≈ 0.007);
    # 0.0 trails it by 0.2 for every user; 2.0 is within the noise too but bigger
    base = np.random.default_rng(0).random(200)
    swing = np.tile([0.1, -0.1], 100)
    values = {0.0: base - 0.2, 0.5: base + swing - 0.001, 1.0: base, 2.0: base - 0.0005}
    assert smallest_within_one_se(values) == 0.5


def _hits(users: int, gained: int, lost: int) -> np.ndarray:
    out = np.zeros(users)
    out[:gained], out[gained:gained + lost] = 1.0, -1.0
    return out


def test_boosts_the_config_fixes_are_not_fitted(items):  # noqa: F811
    spec = RankerSpec(n_items=N_ITEMS, n_categories=20, n_brands=8, n_price_buckets=6, user_dim=16, trend_boost=1.0)
    ranker = Ranker(spec, items)
    # Nothing left to choose: no model or split is touched, the spec stays as it is.
    fixed = load_config(None, ["ranker.trend_boost=1.0", "ranker.collaborative_boost=0.2"])
    assert fit_boosts(None, ranker, None, fixed, 10) == {} and ranker.spec == spec  # type: ignore[arg-type]
    # A ranker without ALS factors has no collaborative boost to choose, whatever the config says.
    no_table = load_config(None, ["ranker.trend_boost=1.0"])
    assert fit_boosts(None, ranker, None, no_table, 10) == {} and ranker.spec == spec  # type: ignore[arg-type]


def user_split(users: np.ndarray, n_items: int = 50) -> EvalSplit:
    """An EvalSplit whose per-user rows name their user: history item user_idx, target user_idx % n_items."""
    n, rows = len(users), np.arange(len(users))
    targets = sp.csr_matrix((np.ones(n, dtype=bool), (rows, users % n_items)), shape=(n, n_items))
    return EvalSplit(split="valid", cutoff_ms=0, users=users, history_items=users[:, None].astype(np.int32),
                     history_types=np.zeros((n, 1), np.int8), history_gaps=np.zeros((n, 1), np.float32),
                     seen=sp.csr_matrix((n, n_items), dtype=bool), targets=targets,
                     item_popularity=np.zeros(n_items, np.int64), n_items=n_items, n_users=int(users.max()) + 1,
                     interactions=sp.csr_matrix((int(users.max()) + 1, n_items), dtype=np.float32),
                     prior=None, min_stage=1)  # type: ignore[arg-type]


def test_the_choose_and_judge_halves_are_disjoint_cover_every_user_and_keep_their_rows():
    split = user_split(np.arange(2, 2002, dtype=np.int32))
    choose, judge = choose_and_judge(split)
    assert not set(choose.users) & set(judge.users)
    assert sorted([*choose.users, *judge.users]) == split.users.tolist()
    assert 0.45 < len(judge.users) / len(split.users) < 0.55  # about half
    for half in (choose, judge):  # every per-user array follows its users
        assert half.history_items[:, 0].tolist() == half.users.tolist()
        assert half.targets.indices.tolist() == (half.users % split.n_items).tolist()


def test_a_users_half_is_the_same_on_every_run_and_in_every_subset():
    split = user_split(np.arange(2, 402, dtype=np.int32))
    choose, judge = choose_and_judge(split)
    again = choose_and_judge(split)
    assert again[0].users.tolist() == choose.users.tolist() and again[1].users.tolist() == judge.users.tolist()
    # every third user, as a smaller split or another day's validation users would hold: same halves
    part = choose_and_judge(subset_users(split, np.arange(0, len(split.users), 3)))
    assert set(part[0].users) <= set(choose.users) and set(part[1].users) <= set(judge.users)
    assert in_judge_half(judge.users).all() and not in_judge_half(choose.users).any()


def test_a_split_one_half_of_which_would_be_empty_is_refused():
    users = np.arange(2, 200, dtype=np.int32)
    alone = users[in_judge_half(users)][:1]
    with pytest.raises(ValueError, match="two non-empty halves"):
        choose_and_judge(user_split(alone))
