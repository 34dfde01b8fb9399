"""rayrec.compress.pipeline.run_compression: every ranker is scored on validation users disjoint from
those its boosts were chosen on (the models' work is stubbed; tests/integration/test_compress_e2e.py
runs it for real)."""

from __future__ import annotations

import numpy as np

from rayrec.compress import pipeline
from rayrec.config import load_config
from rayrec.train.loop import ModelContext
from tests.unit.train.test_systems import user_split


def test_boosts_are_chosen_on_one_half_of_the_validation_users_and_quality_scored_on_the_other(
        ranker, tmp_path, monkeypatch):
    split = user_split(np.arange(2, 202, dtype=np.int32))
    ctx = ModelContext(cfg=load_config(None, []), manifest={"history_length": 5, "vocab_fingerprint": "v"},
                       items=None, valid=split)  # type: ignore[arg-type]
    chose: dict[str, set[int]] = {}
    scored: list[set[int]] = []

    def fit_boosts(retrieval, model, valid, cfg, users):  # the dense reference's boosts
        chose["dense"] = set(valid.users.tolist())
        return {}

    def compress_ranker(fine_tune_ctx, *args):  # fine-tuning chooses the compressed ranker's boosts on ctx.valid
        chose["compressed"] = set(fine_tune_ctx.valid.users.tolist())
        return tmp_path

    def two_stage_metrics(retrieval, model, valid, cfg, users):
        scored.append(set(valid.users.tolist()))
        return {"valid_ndcg@20": 0.5}

    for name, stub in {"fit_boosts": fit_boosts, "compress_ranker": compress_ranker,
                       "two_stage_metrics": two_stage_metrics, "load_ranker": lambda *_: ranker,
                       "load_two_tower": lambda *_: None, "load_compressed_ranker": lambda *_: ranker,
                       "read_meta": lambda _: {"compression": {}},
                       "scoring_latency": lambda *_, **__: {"p50_ms": 1.0, "p99_ms": 2.0}}.items():
        monkeypatch.setattr(pipeline, name, stub)
    result = pipeline.run_compression(ctx, tmp_path, tmp_path / "out", io=object())  # type: ignore[arg-type]

    assert result["dense"]["valid_ndcg@20"] == result["compressed"]["valid_ndcg@20"] == 0.5
    assert len(scored) == 2 and scored[0] == scored[1]  # dense and compressed judged on the same users
    assert chose["dense"] == chose["compressed"]
    assert not chose["dense"] & scored[0] and chose["dense"] | scored[0] == set(split.users.tolist())
