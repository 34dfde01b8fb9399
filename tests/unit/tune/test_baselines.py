"""Baseline tuning through Ray Tune on a hand-made processed folder: a setting from the space is chosen,
scored on validation users with history, and recorded with the trial count."""

from __future__ import annotations

import numpy as np

from rayrec.config import SearchDimension
from rayrec.train.evaluate import load_eval_split
from rayrec.tune.baselines import score_setting, tune_baseline, tuned_systems
from tests.unit.train.test_evaluate import CLICK, write_processed

# Item 2 and 4 were popular long ago, item 5 on the last day of train; valid's users 2..4 (who have
# seen item 2) take item 5: a short trend window ranks it first, a long one second.
EVENTS = ([(u, 2, 1.0 + 0.1 * u, 0, CLICK) for u in range(2, 9)] + [(u, 4, 2.0 + 0.1 * u, 0, CLICK) for u in range(12, 18)]
          + [(u, 5, 9.5 + 0.01 * u, 0, CLICK) for u in (9, 10, 11)] + [(u, 5, 10.5 + 0.01 * u, 1, CLICK) for u in (2, 3, 4)])


def test_tuning_a_baseline_picks_a_setting_from_its_space_and_records_it(tmp_path, ray_local):
    s = load_eval_split(write_processed(tmp_path / "p", events=EVENTS, n_users=18, n_items=7), "valid", 20)
    space = {"window_days": SearchDimension(type="choice", values=[2.0, 30.0])}
    tuning = tune_baseline("recently_popular", space, s, trials=4, seed=0, storage=tmp_path / "tune")
    assert tuning.trials == 4 and len(tuning.history) == 4
    assert tuning.params["window_days"] in (2.0, 30.0)
    scores = {w: score_setting("recently_popular", {"window_days": w}, s, True) for w in (2.0, 30.0)}
    assert scores[2.0] != scores[30.0]  # the space has a better and a worse setting
    tried = {h["params"]["window_days"] for h in tuning.history}
    assert tuning.valid_ndcg == max(scores[w] for w in tried)
    assert np.isclose(tuning.valid_ndcg, score_setting("recently_popular", tuning.params, s, True))
    [system] = tuned_systems({"recently_popular": tuning})
    assert system.window_days == tuning.params["window_days"]
