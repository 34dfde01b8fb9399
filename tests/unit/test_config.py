from __future__ import annotations

from pathlib import Path

import pytest

from rayrec.config import ConfigError, load_config
from tests.conftest import REPO


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith(("serve", "cluster")):
            continue
        load_config(path)


def test_unknown_key_is_named(tmp_path: Path):
    bad = tmp_path / "c.yaml"
    bad.write_text("preprocess:\n  min_user_evnts: 3\n")
    with pytest.raises(ConfigError, match=r"preprocess\.min_user_evnts: unknown key"):
        load_config(bad)


def test_wrong_type_is_named(tmp_path: Path):
    bad = tmp_path / "c.yaml"
    bad.write_text("preprocess:\n  history_length: lots\n")
    with pytest.raises(ConfigError, match=r"preprocess\.history_length"):
        load_config(bad)


def test_overrides_apply_with_yaml_typing():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["preprocess.history_length=7", "generate.scale=tiny",
                                                       "validate.require_known_items=false"])
    assert cfg.preprocess.history_length == 7
    assert cfg.generate is not None and cfg.generate.scale == "tiny"
    assert cfg.validate_.require_known_items is False


def test_bad_override_is_explained():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["preprocess"])
    with pytest.raises(ConfigError, match=r"generate\.scale"):
        load_config(None, ["generate.scale=huge"])


def test_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match="valid_fraction"):
        load_config(None, ["preprocess.valid_fraction=0.45", "preprocess.test_fraction=0.45"])


def test_a_refit_on_validation_needs_the_boost_chosen_there():
    with pytest.raises(ConfigError, match=r"train\.include_valid needs a number for ranker\.trend_boost"):
        load_config(None, ["train.include_valid=true"])
    with pytest.raises(ConfigError, match=r"train\.include_valid needs a number for ranker\.collaborative_boost"):
        load_config(None, ["train.include_valid=true", "ranker.trend_boost=0.5"])
    both = ["train.include_valid=true", "ranker.trend_boost=0.5", "ranker.collaborative_boost=0.2"]
    assert load_config(None, both).ranker.collaborative_boost == 0.2
    # Without collaborative factors there is no collaborative boost to choose.
    assert load_config(None, [*both[:2], "ranker.collaborative_factors=0"]).ranker.trend_boost == 0.5


def test_training_on_the_serving_pool_refuses_view_negatives_it_would_ignore():
    with pytest.raises(ConfigError, match=r"ranker\.serving_pool_only .* ranker\.viewed_negatives"):
        load_config(None, ["ranker.serving_pool_only=true", "ranker.viewed_negatives=true"])
    assert load_config(None, ["ranker.serving_pool_only=true"]).ranker.serving_pool_only


def test_serving_must_store_as_much_history_as_the_models_read():
    with pytest.raises(ConfigError, match=r"max_history \(40\) is below preprocess\.history_length \(50\)"):
        load_config(None, ["preprocess.history_length=50", "serve.feature_store.max_history=40"])
    assert load_config(None, ["preprocess.history_length=50"]).serve.feature_store.max_history == 50


def test_fingerprint_ignores_output_names_but_not_settings():
    a = load_config(None, ["name=a"])
    b = load_config(None, ["name=b"])
    c = load_config(None, ["preprocess.history_length=3"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
