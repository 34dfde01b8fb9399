"""The stronger peers (EASE, SASRec) and the common cold-user policy, on hand-made processed folders."""

from __future__ import annotations

import numpy as np

from rayrec.train.baselines import EASE, ItemKNN, MostPopular, RecentlyPopular
from rayrec.train.cold_start import choose_cold_start
from rayrec.train.evaluate import EvalSplit, evaluate, load_eval_split
from rayrec.train.sasrec import SASRecRecommender, training_windows
from tests.unit.train.test_baselines import co_occurrence_events
from tests.unit.train.test_evaluate import CLICK, Fixed, write_processed


def test_ease_weights_are_the_closed_form(tmp_path):
    root = write_processed(tmp_path / "p", events=co_occurrence_events(), n_users=10, n_items=7)
    s = load_eval_split(root, "valid", history_length=5)
    ease = EASE(l2=2.0)
    ease.fit(s)
    x = s.interactions.astype(bool).astype(np.float64).toarray()
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(x.shape[1]))
    expected = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ease.weights, expected, atol=1e-5)
    assert ease.recommend(s, 1, exclude_seen=True)[0, 0] == 3  # item 2's co-occurring item, not the popular 4


def test_a_baseline_too_large_is_reported_not_run(tmp_path):
    s = load_eval_split(write_processed(tmp_path / "p"), "test", history_length=3)
    df = evaluate([EASE(max_gb=1e-12), MostPopular()], s, ks=(3,))
    row = df.set_index("system").loc["EASE"]
    assert "needs" in row["not_run"] and np.isnan(row["recall@3"])
    assert df.set_index("system").loc["MostPopular", "recall@3"] >= 0


def test_training_windows_cover_every_interaction_as_a_target():
    windows = training_windows([np.arange(2, 12)], max_length=4)  # 10 items, windows of 5 from the end
    targets = windows[:, 1:][windows[:, :-1] != 0]
    assert sorted(targets.tolist()) == list(range(3, 12))  # every item after the first is a target once


def sequence_events(n_users: int = 40) -> list[tuple[int, int, float, int, int]]:
    """Every user walks around the ring of items 2..13 (2 -> 3 -> ... -> 13 -> 2) from a user-dependent
    start: seven steps before day 10 (train), the eighth is the valid target (5 items stay unseen)."""
    events = []
    for u in range(2, 2 + n_users):
        path = [2 + (u + t) % 12 for t in range(8)]
        events += [(u, item, 1.0 + t + 0.01 * u, 0, CLICK) for t, item in enumerate(path[:-1])]
        events.append((u, path[-1], 10.5, 1, CLICK))
    return events


def test_sasrec_learns_the_next_step_of_a_sequence(tmp_path):
    root = write_processed(tmp_path / "p", events=sequence_events(), n_users=42, n_items=14)
    s = load_eval_split(root, "valid", history_length=20)
    model = SASRecRecommender(max_length=8, dim=16, layers=1, heads=1, dropout=0.0, lr=1e-2, epochs=60, batch_size=16)
    model.fit(s)
    top = model.recommend(s, 1, exclude_seen=True)
    hits = np.asarray(s.targets[np.arange(len(s.users)), top[:, 0]]).ravel()
    assert hits.mean() >= 0.9  # popularity alone would say one item for everyone
    pop = MostPopular()
    pop.fit(s)
    pop_hits = np.asarray(s.targets[np.arange(len(s.users)), pop.recommend(s, 1, True)[:, 0]]).ravel()
    assert pop_hits.mean() <= 0.5


def cold_test_split(tmp_path) -> EvalSplit:
    """Train and valid from users 2..9; the test period's users (10..13) are all new."""
    events = [e for e in co_occurrence_events() if e[3] < 2] + [(u, i, 14.0 + 0.1 * i, 2, CLICK) for u in (10, 11, 12, 13) for i in (3, 5)]
    return load_eval_split(write_processed(tmp_path / "c", events=events, n_users=14, n_items=7), "test", 5)


def test_with_every_test_user_cold_all_systems_return_the_same_lists(tmp_path):
    s = cold_test_split(tmp_path)
    assert s.no_history.all()
    systems = [MostPopular(), Fixed("fixed order", [6, 4, 2]), ItemKNN(neighbors=2), EASE(l2=1.0)]
    alone = evaluate(systems, s, ks=(3,))
    assert alone["recall@3"].nunique() > 1  # on their own the systems disagree on these users
    common = evaluate(systems, s, ks=(3,), cold_start=RecentlyPopular(window_days=1))
    per_user = common.attrs["per_user"]
    for name in per_user:
        np.testing.assert_array_equal(per_user[name]["ndcg@3"], per_user["MostPopular"]["ndcg@3"])
    assert common["recall@3"].nunique() == 1


def test_the_cold_start_policy_is_the_best_on_validation_cold_users(tmp_path):
    # item 2 is the all-time favourite; item 5 took over on the last day of train, and valid's cold
    # users (10, 11) take item 5
    events = [(u, 2, 1.0 + 0.1 * u, 0, CLICK) for u in range(2, 9)] + [(u, 5, 9.5, 0, CLICK) for u in (5, 6, 7)]
    events += [(10, 5, 10.6, 1, CLICK), (11, 5, 10.7, 1, CLICK), (2, 3, 10.5, 1, CLICK)]
    root = write_processed(tmp_path / "v", events=events, n_users=12, n_items=7)
    s = load_eval_split(root, "valid", 5)
    choice = choose_cold_start(s, windows=[1.0, 30.0])
    assert choice.window_days == 1.0 and set(choice.valid_ndcg) == {"popular", "recent 1d", "recent 30d"}
    assert isinstance(choice.system(), RecentlyPopular)
    no_cold = load_eval_split(write_processed(tmp_path / "n"), "valid", 5)
    assert not no_cold.no_history.any() and choose_cold_start(no_cold, [1.0]).window_days is None
