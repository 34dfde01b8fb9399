"""rayrec.train.systems: the one-standard-error rule that picks the ranker's trend boost."""

from __future__ import annotations

import numpy as np

from rayrec.config import load_config
from rayrec.models.ranker import Ranker, RankerSpec
from rayrec.train.systems import fit_boosts, smallest_within_one_se
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
