"""The YAML search space maps onto Ray Tune domains; bad dimensions fail at config load."""

from __future__ import annotations

import pytest

from rayrec.config import ConfigError, load_config
from rayrec.tune.runner import search_space


def test_space_dimensions_become_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = load_config(None, ["tune.space={train.lr: {type: loguniform, low: 1e-4, high: 1e-2}, "
                             "ranker.cross_rank: {type: int, low: 4, high: 32}, "
                             "compress.quantize: {type: choice, values: [true, false]}, "
                             "compress.deep: {type: uniform, low: 0, high: 0.75}}"])
    space = search_space(cfg.tune.space)
    assert isinstance(space["train.lr"], Float) and isinstance(space["compress.deep"], Float)
    assert isinstance(space["ranker.cross_rank"], Integer) and space["ranker.cross_rank"].upper == 33
    assert isinstance(space["compress.quantize"], Categorical)


@pytest.mark.parametrize("dimension", ["{type: choice}", "{type: int, low: 5, high: 1}", "{type: normal}"])
def test_incomplete_dimensions_are_config_errors(dimension):
    with pytest.raises(ConfigError, match="tune.space"):
        load_config(None, [f"tune.space={{ranker.dim: {dimension}}}"])


def test_a_short_search_learns_from_its_scores_after_the_random_start():
    import optuna

    from rayrec.tune.runner import tpe_search

    def proposals(best: float) -> list[float]:
        study = optuna.create_study(direction="maximize", sampler=tpe_search(8, seed=0, metric="x", mode="max")._sampler)
        study.optimize(lambda t: -(t.suggest_float("x", 0.0, 1.0) - best) ** 2, n_trials=8)
        return [t.params["x"] for t in study.trials]

    low, high = proposals(0.1), proposals(0.9)
    assert low[:4] == high[:4]  # the random start-up: the same draws for one seed, whatever the objective
    assert low[4:] != high[4:]  # then each search follows its own scores (pure random search would not)
    assert abs(sum(low[4:]) / 4 - 0.1) < abs(sum(high[4:]) / 4 - 0.1)
