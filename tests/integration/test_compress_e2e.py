"""The compression stage on the trained tiny models: every ranker is scored on validation users
disjoint from those that chose its boosts (tests/unit/compress/test_pipeline.py stubs the models)."""

from __future__ import annotations

import pytest

from rayrec.config import with_values
from rayrec.train.trainer import load_context

pytestmark = pytest.mark.integration


def test_compressed_and_dense_rankers_are_judged_on_users_their_boosts_were_not_chosen_on(trained, tmp_path,
                                                                                         monkeypatch):
    from rayrec.compress import pipeline
    from rayrec.train import loop

    root, cfg, _, _, _ = trained
    cfg = with_values(cfg, {"compress.deep": 0.5, "compress.finetune_epochs": 1})
    ctx = load_context(cfg)
    chose: list[set[int]] = []  # each fit_boosts call's validation users: the dense reference's, fine-tuning's
    scored: list[set[int]] = []  # each quality measurement's: dense, compressed

    def recording(fn, into):
        def call(retrieval, ranker, split, *args):
            into.append(set(split.users.tolist()))
            return fn(retrieval, ranker, split, *args)
        return call

    monkeypatch.setattr(pipeline, "fit_boosts", recording(pipeline.fit_boosts, chose))
    monkeypatch.setattr(loop, "fit_boosts", recording(loop.fit_boosts, chose))  # train_ranker's, at the last epoch
    monkeypatch.setattr(pipeline, "two_stage_metrics", recording(pipeline.two_stage_metrics, scored))
    result = pipeline.run_compression(ctx, root / "runs", tmp_path / "compressed")

    assert len(chose) == 2 and len(scored) == 2 and scored[0] == scored[1]
    assert not (chose[0] | chose[1]) & scored[0]
    assert chose[0] | scored[0] == set(ctx.valid.users.tolist())
    assert 0 <= result["compressed"]["valid_ndcg@20"] <= 1
