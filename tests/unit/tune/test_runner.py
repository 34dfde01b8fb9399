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
