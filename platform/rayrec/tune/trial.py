"""One Ray Tune trial: train a ranker with the sampled settings, compress it, and report quality,
latency and size together.

The trial is a function trainable that runs the same ``train_ranker`` loop Ray Train workers run,
in the trial's own process (``single_process_io``): on a small cluster a trial is one worker, and
nesting a Ray Train run per trial would double the processes per CPU. Every epoch reports the
dense model's validation NDCG/Recall (ASHA stops weak trials on it) with its measured latency and
size, so even a stopped trial carries all objectives; the last report (``training_iteration`` =
epochs + 1) is the compressed model, scored by the same evaluation.

Retrieval is trained once by the driver and shared, unless the space samples ``model.*`` keys:
then each trial trains its own retrieval model first (in-process, like the ranker).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rayrec.compress.bundle import load_compressed_ranker
from rayrec.compress.pipeline import compress_ranker, measure_ranker
from rayrec.config import RayrecConfig, with_values
from rayrec.runtime import set_threads
from rayrec.train.loop import LoopIO, ModelContext, train_ranker, train_retrieval
from rayrec.train.offline import load_ranker
from rayrec.train.trainer import arrays_io, load_context

# The objectives every report carries; Optuna's multi-objective TPE reads the last one of a trial.
QUALITY, LATENCY, SIZE = "valid_ndcg@20", "p99_ms", "size_bytes"


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> RayrecConfig:
    """The trial's full config: the base config with the sampled dotted keys set."""
    return with_values(RayrecConfig.model_validate(base), params)


def _keeping_bundles(io: LoopIO, into: Path, on_epoch: Any = None) -> LoopIO:
    """``io`` whose epoch reports copy the checkpoint folder to ``into`` (the loop deletes its own)."""

    def report(metrics: dict[str, float], folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(into, ignore_errors=True)
            shutil.copytree(folder, into)
        if on_epoch is not None:
            on_epoch(metrics)

    return replace(io, report=report)


def _trial_retrieval(ctx: ModelContext, rows: dict[str, np.ndarray], trial_dir: Path) -> Path:
    cfg = ctx.cfg
    out = trial_dir / "two_tower"
    train_retrieval(ctx, _keeping_bundles(arrays_io(rows, cfg.train.batch_size, cfg.train.seed), out))
    return out


def run_trial(params: dict[str, Any], *, base: dict[str, Any], retrieval_dir: str | None,
              ranker_rows: dict[str, np.ndarray], retrieval_rows: dict[str, np.ndarray] | None) -> None:
    """The trainable: ``params`` are the sampled dotted keys, ``base`` the experiment's config; the
    training examples come materialised once by the driver (through the object store), so trials
    start no Ray Data work of their own and never wait for CPUs their siblings hold."""
    from ray import tune

    cfg = trial_config(base, params)
    set_threads(cfg.train.threads_per_worker)
    cfg = with_values(cfg, {"train.eval_users": cfg.tune.eval_users, "train.ranker_epochs": cfg.tune.epochs})
    trial_dir = Path(tune.get_context().get_trial_dir())
    ctx = load_context(cfg)
    if retrieval_dir is None:
        assert retrieval_rows is not None, "trials that train retrieval need its examples"
        retrieval = _trial_retrieval(ctx, retrieval_rows, trial_dir)
    else:
        retrieval = Path(retrieval_dir)
    candidates = cfg.compress.latency_candidates
    dense_dir = trial_dir / "ranker"

    def report_dense(metrics: dict[str, float]) -> None:
        quality = {k: v for k, v in metrics.items() if k.startswith("valid_")}  # the loop just scored it
        cost = measure_ranker(ctx, retrieval, load_ranker(ctx, dense_dir), cfg.tune.eval_users, candidates, quality)
        tune.report({**cost.flat(), "loss": metrics["loss"], "stage": 0.0})

    batches = arrays_io(ranker_rows, cfg.train.batch_size, cfg.train.seed)
    train_ranker(ctx, _keeping_bundles(batches, dense_dir, report_dense), retrieval)
    dense = load_ranker(ctx, dense_dir)
    bundle = compress_ranker(ctx, retrieval, dense, batches, trial_dir / "ranker_compressed", cfg.compress)
    small = load_compressed_ranker(bundle, ctx.items, ctx.vocab_fingerprint)
    cost = measure_ranker(ctx, retrieval, small, cfg.tune.eval_users, candidates)
    tune.report({**cost.flat(), "stage": 1.0, "bundle": str(bundle)})
