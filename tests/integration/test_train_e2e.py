"""Train both models with real Ray Train on tiny data, survive a killed worker, evaluate everything."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rayrec.artifacts import ArtifactError, load_bundle
from rayrec.config import load_config, with_values
from rayrec.features.trend import trending_order
from rayrec.train.loop import load_two_tower
from rayrec.train.offline import load_ranker, run_evaluation
from rayrec.train.systems import COLLABORATIVE_BOOST_GRID, TREND_BOOST_GRID, two_stage_metrics, two_stage_system
from rayrec.train.trainer import load_context, materialize, training_dataset
from tests.conftest import read_parquet_in_order

pytestmark = pytest.mark.integration


def test_a_killed_worker_resumes_from_the_last_checkpoint(trained):
    root, _, _, retrieval, _ = trained
    killed_pid = (root / "killed").read_text()
    assert killed_pid.isdigit()  # the hook really ran and killed a process
    started = [int(e) for e in (root / "epochs.log").read_text().split()]
    assert started == [0, 1, 1, 2]  # epoch 1 redone once, epoch 0 not redone
    assert [int(m["epoch"]) for m in retrieval.metrics] == [0, 1, 2]
    assert retrieval.curves_png.stat().st_size > 0 and (retrieval.bundle / "metrics.csv").exists()


def test_training_data_keeps_the_files_row_order_however_its_read_tasks_finish(trained, tmp_path):
    """Blocks come out in completion order by default: a large first file then lands after small
    later ones, and the same seed trains a different model (Online Retail's three files did)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, cfg, ctx, _, _ = trained
    table = read_parquet_in_order(Path(cfg.preprocess.out_dir) / "events")
    table = table.filter(pa.compute.and_(pa.compute.equal(table["split"], 0),  # rows the loader keeps
                                         pa.compute.greater_equal(table["stage"], cfg.model.train_min_stage)))
    events = tmp_path / "processed" / "events"
    events.mkdir(parents=True)
    parts = [pa.concat_tables([table] * 40), table.slice(0, 7), table.slice(7, 7)]
    for i, part in enumerate(parts):
        pq.write_table(part, events / f"part-{i}.parquet")
    order_cfg = with_values(cfg, {"preprocess.out_dir": str(tmp_path / "processed")})
    rows = materialize(training_dataset(order_cfg, "two_tower", ctx.manifest["history_length"]))
    assert rows["item_idx"].tolist() == np.concatenate([p["item_idx"].to_numpy() for p in parts]).tolist()


@pytest.mark.parametrize("kind", ["two_tower", "ranker"])
def test_a_refit_learns_from_the_validation_split_too(trained, kind):
    import pyarrow as pa

    _, cfg, _, _, _ = trained
    processed = Path(cfg.preprocess.out_dir)
    event_splits = read_parquet_in_order(processed / "events")["split"].to_numpy()
    table = read_parquet_in_order(processed / ("events" if kind == "two_tower" else "ranking"))
    if kind == "two_tower":
        table = table.filter(pa.compute.greater_equal(table["stage"], cfg.model.train_min_stage))
    if kind == "ranker" and not cfg.ranker.viewed_negatives:
        table = table.filter(pa.compute.not_equal(table["negative"], "viewed"))
    splits = table["split"].to_numpy()
    refit = with_values(cfg, {"train.include_valid": True, "ranker.trend_boost": 1.0, "ranker.collaborative_boost": 0.2})
    for c, last_split in ((cfg, 0), (refit, 1)):
        ctx = load_context(c)
        assert (ctx.valid is None) == (last_split == 1)  # no validation metrics on data it learned from
        rows = materialize(training_dataset(c, kind, ctx.manifest["history_length"]))
        assert len(rows["item_idx"]) == int((splits <= last_split).sum())
        assert len(ctx.trend.keys) == int((event_splits <= last_split).sum())  # trend features and negatives
        assert ctx.interactions.sum() == int((event_splits <= last_split).sum())  # the ranker's ALS table
    assert (splits == 1).sum() > 0


def test_checkpoints_load_safely_and_refuse_another_vocabulary(trained, tmp_path):
    _, _, ctx, retrieval, ranker = trained
    state, meta = load_bundle(retrieval.bundle, "two_tower", ctx.vocab_fingerprint)
    assert meta["epoch"] == 2 and "item_tower.item_emb.weight" in state
    with pytest.raises(ArtifactError, match="vocabulary"):
        load_bundle(retrieval.bundle, "two_tower", "0" * 16)
    with pytest.raises(ArtifactError, match="expected 'two_tower'"):
        load_bundle(ranker.bundle, "two_tower", ctx.vocab_fingerprint)
    copy = Path(shutil.copytree(retrieval.bundle, tmp_path / "bundle"))
    (copy / "weights.pt").write_bytes((copy / "weights.pt").read_bytes() + b"x")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_bundle(copy, "two_tower", ctx.vocab_fingerprint)


def test_the_ranker_keeps_the_boosts_fitted_on_validation(trained):
    _, cfg, ctx, retrieval, ranker = trained
    meta = load_bundle(ranker.bundle, "ranker", ctx.vocab_fingerprint)[1]
    fits = {name: {float(b): m for b, m in meta[f"{name}_fit"].items()}
            for name in ("trend_boost", "collaborative_boost")}
    assert sorted(fits["trend_boost"]) == sorted(TREND_BOOST_GRID)
    assert sorted(fits["collaborative_boost"]) == sorted(COLLABORATIVE_BOOST_GRID)
    model = load_ranker(ctx, ranker.bundle)
    trend, collaborative = model.spec.trend_boost, model.spec.collaborative_boost
    assert (trend, collaborative) == (meta["spec"]["trend_boost"], meta["spec"]["collaborative_boost"])
    assert trend in fits["trend_boost"] and collaborative in fits["collaborative_boost"]
    # the trend boost is fitted first, with the collaborative term off; that is the collaborative grid's 0
    assert fits["trend_boost"][trend] == pytest.approx(fits["collaborative_boost"][0.0])
    assert ranker.metrics[-1]["valid_ndcg@20"] == pytest.approx(fits["collaborative_boost"][collaborative]["valid_ndcg@20"])
    # each epoch records the boosts it was scored under: the spec's defaults before the last
    assert [m["trend_boost"] for m in ranker.metrics] == [0.0] * (len(ranker.metrics) - 1) + [trend]
    assert [m["collaborative_boost"] for m in ranker.metrics] == [0.0] * (len(ranker.metrics) - 1) + [collaborative]
    assert model.collaborative_items.abs().sum() > 0  # the ALS table was fitted and saved with the weights
    # the saved boosts are the ones the evaluation of the loaded model measures
    again = two_stage_metrics(load_two_tower(ctx, retrieval.bundle), model, ctx.valid, cfg, cfg.train.eval_users)
    assert again == pytest.approx(fits["collaborative_boost"][collaborative])


def test_evaluation_reports_every_system_on_the_same_split(trained, tmp_path):
    _, cfg, ctx, _, _ = trained
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"out_dir": str(tmp_path)})})
    table, info = run_evaluation(cfg, ctx)
    systems = table["system"].tolist()
    # six default baselines (EASE among them) + retrieval + two-stage
    assert len(systems) == 8 and "EASE" in systems and any("two_tower+ranker" in s for s in systems)
    for col in ("recall@20", "ndcg@20", "mrr", "hit@10", "coverage@20", "arp@20"):
        assert table[col].between(0, 1).all(), col
    report = json.loads(Path(info["paths"]["json"]).read_text())
    assert len(report["rows"]) == 8 and Path(info["paths"]["png"]).stat().st_size > 0


def test_users_without_history_get_the_trending_items_and_everyone_else_the_ranker(trained):
    _, cfg, ctx, retrieval, ranker = trained
    split = ctx.valid
    cold = np.arange(len(split.users)) % 2 == 0  # half the users lose their history
    split = dataclasses.replace(split, history_items=np.where(cold[:, None], 0, split.history_items))
    r, rk = load_two_tower(ctx, retrieval.bundle), load_ranker(ctx, ranker.bundle)
    by_model = two_stage_system(r, rk, with_values(cfg, {"ranker.cold_start": "model"})).recommend(split, 10, True)
    trending = two_stage_system(r, rk, with_values(cfg, {"ranker.cold_start": "trending"})).recommend(split, 10, True)
    assert (trending[~cold] == by_model[~cold]).all()
    counts = split.recent_counts(rk.spec.trend_window_days)
    for row in np.flatnonzero(cold):
        seen = split.seen[row].indices
        expected = [i for i in trending_order(counts) if i not in seen][:10]
        assert len(expected) == 10 and trending[row].tolist() == expected


def test_compression_shrinks_prunes_quantizes_and_is_measured(trained, tmp_path):
    from rayrec.artifacts import read_meta
    from rayrec.compress.bundle import load_compressed_ranker
    from rayrec.compress.pipeline import run_compression
    from rayrec.compress.quantize import is_quantized

    root, cfg, _, _, _ = trained
    cfg = cfg.model_copy(update={"compress": cfg.compress.model_copy(update={
        "deep": 0.5, "cross_rank": 0.5, "embedding_dim": 0.25, "sparsity": 0.5, "quantize": True,
        "drop_title_affinity": True, "finetune_epochs": 1})})
    ctx = load_context(cfg)
    runs = tmp_path / "runs"  # a copy whose dense ranker carries a boost off the grid
    shutil.copytree(root / "runs", runs)
    dense_meta = json.loads((runs / "ranker" / "meta.json").read_text())
    dense_meta["spec"]["trend_boost"] = 0.3
    (runs / "ranker" / "meta.json").write_text(json.dumps(dense_meta))
    result = run_compression(ctx, runs, tmp_path / "compressed")
    dense, small = result["dense"], result["compressed"]
    assert small["parameters"] < 0.6 * dense["parameters"]  # structured: tensors really shrank
    assert small["nonzero_parameters"] < small["parameters"]  # unstructured zeros on top
    assert small["size_bytes"] < 0.5 * dense["size_bytes"]  # shrink + int8
    assert 0 <= small["valid_ndcg@20"] <= 1 and small["p99_ms"] > 0
    meta = read_meta(tmp_path / "compressed")
    spec, dense_spec = meta["spec"], dense_meta["spec"]
    assert spec["cross_rank"] < dense_spec["cross_rank"] and spec["dim"] < dense_spec["dim"]
    assert dense_spec["title_affinity"] and not spec["title_affinity"]  # the input group and its work removed
    assert meta["compression"]["structured"]["ratios"]["inputs"] == ["title_affinity"]
    assert meta["compression"]["quantization"] == "int8_dynamic"
    assert meta["compression"]["unstructured"]["kind"] == "unstructured"
    # fine-tuning moves the scale of the ranker's probabilities: its boost is fitted again on validation
    assert spec["trend_boost"] in TREND_BOOST_GRID and spec["collaborative_boost"] in COLLABORATIVE_BOOST_GRID
    compressed = load_compressed_ranker(tmp_path / "compressed", ctx.items, ctx.vocab_fingerprint)
    assert is_quantized(compressed)
    # the ALS table is data beside the weights: carried over as it is, and left out of the measured size
    assert torch.equal(compressed.collaborative_items, load_ranker(ctx, runs / "ranker").collaborative_items)


def test_a_tiny_tune_runs_through_ray_tune_and_resumes(trained, tmp_path):
    from rayrec.tune.runner import run_tune

    _, cfg, _, _, _ = trained
    cfg = with_values(cfg, {
        "tune.space": {"ranker.cross_rank": {"type": "int", "low": 4, "high": 16},
                       "compress.deep": {"type": "uniform", "low": 0.0, "high": 0.5},
                       "compress.quantize": {"type": "choice", "values": [True, False]}},
        "tune.num_samples": 2, "tune.epochs": 1, "tune.eval_users": 50, "tune.out_dir": str(tmp_path),
        "compress.finetune_epochs": 1, "compress.sparsity": 0.3,
    })  # fmt: skip
    outcome = run_tune(cfg)
    assert len(outcome.rows) == 2 and all(r.error is None for r in outcome.rows)
    for r in outcome.rows:  # every trial reports quality, latency and size together
        assert {"valid_ndcg@20", "valid_recall@20", "p99_ms", "size_bytes"} <= set(r.metrics)
    assert outcome.front and outcome.pareto_png.stat().st_size > 0 and "chosen" in outcome.report_md.read_text()
    chosen = load_config(outcome.chosen_yaml)
    assert chosen.ranker.cross_rank == outcome.chosen.params["ranker.cross_rank"]
    # The chosen YAML is a serving config as it stands: a release is built from it and Serve's
    # builder (what `serve deploy configs/serve.yaml` calls) turns it into the app.
    from ray.serve import Application

    from rayrec.index.build import build_release
    from rayrec.serve.app import app_builder

    releases = [f"serve.release_dir={tmp_path / 'releases'}"]
    build_release(load_config(outcome.chosen_yaml, releases))
    assert isinstance(app_builder({"config": str(outcome.chosen_yaml), "set": releases}), Application)
    again = run_tune(cfg, resume=True)  # Tuner.restore: the finished trials are kept, not rerun
    assert sorted(r.trial for r in again.rows) == sorted(r.trial for r in outcome.rows)
