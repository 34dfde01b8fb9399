"""`rayrec train`: the Ray Train driver that runs ``loop.py`` on workers with DDP and checkpoints.

Per model: a Ray Data pipeline turns the processed Parquet examples into fixed-size arrays, a
``TorchTrainer`` with the configured ``ScalingConfig`` runs the loop on each worker's shard
(``get_dataset_shard``), every epoch is reported with a checkpoint under ``RunConfig.storage_path``,
and ``FailureConfig(max_failures)`` restarts dead workers from the last checkpoint. The final
checkpoint becomes the model bundle under ``<train.out_dir>/<model>/`` with its metrics CSV and
training-curve PNG.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import scipy.sparse as sp

from rayrec.config import ConfigError, RayrecConfig
from rayrec.features.batches import example_inputs
from rayrec.features.items import ItemFeatureTable
from rayrec.features.trend import ItemTrend
from rayrec.runtime import set_threads
from rayrec.train.evaluate import count_matrix, load_eval_split
from rayrec.train.loop import METRICS_CSV, LoopIO, ModelContext, read_history, train_ranker, train_retrieval
from rayrec.train.plots import plot_training_curves

RANKING_LABELS = ("label_click", "label_purchase")
RANKING_EXTRA = (*RANKING_LABELS, "ts_ms")  # the example's time: the trend feature counts before it


@dataclass(frozen=True)
class TrainedModel:
    kind: str
    bundle: Path
    metrics: list[dict[str, float]]
    curves_png: Path


def load_context(cfg: RayrecConfig, with_valid: bool = True) -> ModelContext:
    processed = Path(cfg.preprocess.out_dir)
    manifest = json.loads((processed / "manifest.json").read_text())
    items = ItemFeatureTable.from_parquet(processed / "items.parquet", manifest["vocab_sizes"]["items"],
                                          cfg.preprocess.title_tokens)
    valid = (load_eval_split(processed, "valid", manifest["history_length"], cfg.evaluate.min_stage)
             if with_valid and not cfg.train.include_valid else None)
    sizes = manifest["vocab_sizes"]
    trend, interactions = fit_split_interactions(processed / "events", last_fit_split(cfg), sizes["users"],
                                                 sizes["items"], with_matrix=bool(cfg.ranker.collaborative_factors))
    return ModelContext(cfg=cfg, manifest=manifest, items=items, valid=valid, trend=trend, interactions=interactions)


def fit_split_interactions(events: Path, last_split: int, n_users: int, n_items: int,
                           with_matrix: bool) -> tuple[ItemTrend, sp.csr_matrix | None]:
    """The interactions the models learn from (preprocessing's ``events`` in splits ``<= last_split``),
    read once: as the ranker's trend counts and (``with_matrix``) as the float32 users x items counts its
    ALS factors are fitted on."""
    columns = ["item_idx", "ts_ms", *(["user_idx"] if with_matrix else [])]
    table = pads.dataset(events, format="parquet").to_table(columns=columns, filter=pads.field("split") <= last_split)
    items = table.column("item_idx").to_numpy()
    trend = ItemTrend.from_events(items, table.column("ts_ms").to_numpy())
    if not with_matrix:
        return trend, None
    return trend, count_matrix(table.column("user_idx").to_numpy(), items, (n_users, n_items), np.float32)


def last_fit_split(cfg: RayrecConfig) -> int:
    """The last split the models learn from: 0 = train, 1 = train and valid (``train.include_valid``)."""
    return 1 if cfg.train.include_valid else 0


def _mask_own_item(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Blank the target item out of each example's history (an earlier visit's view of it).

    Left in, a model learns to copy a viewed item (retrieval) or to score "seen before" (ranker),
    which is worth nothing where the items to find are the ones not yet seen (evaluation excludes
    them). The rest of the target's own visit is already outside the history
    (``preprocess.history_gap_s``).
    """
    own = rows["hist_items"] == rows["item_idx"][:, None]
    for name in ("hist_items", "hist_types", "hist_gaps", "hist_gaps_s"):
        rows[name] = np.where(own, 0, rows[name]).astype(rows[name].dtype)
    return rows


def _retrieval_rows(table: pa.Table, length: int, min_stage: int, last_split: int) -> dict[str, np.ndarray]:
    """Engagements at ``min_stage`` or later in the splits up to ``last_split``, own item masked."""
    mask = (table.column("split").to_numpy() <= last_split) & (table.column("stage").to_numpy() >= min_stage)
    return _mask_own_item(example_inputs(table.filter(pa.array(mask)), length))


def _ranking_rows(table: pa.Table, length: int, viewed_negatives: bool, last_split: int) -> dict[str, np.ndarray]:
    """Ranking examples (positives and their negatives alike) in the splits up to ``last_split``, own item masked."""
    mask = table.column("split").to_numpy() <= last_split
    if not viewed_negatives:
        mask &= table.column("negative").to_numpy(zero_copy_only=False) != "viewed"
    rows = example_inputs(table.filter(pa.array(mask)), length, extra=RANKING_EXTRA)
    return _mask_own_item(rows)


def training_dataset(cfg: RayrecConfig, kind: str, history_length: int) -> Any:
    """The training splits as a Ray Dataset of fixed-size arrays in the files' row order (the loop
    shuffles it per epoch with the configured seed)."""
    import ray

    processed, last_split = Path(cfg.preprocess.out_dir), last_fit_split(cfg)
    if kind == "two_tower":
        ds = ray.data.read_parquet(str(processed / "events"), columns=[
            "item_idx", "user_idx", "split", "stage", "hist_items", "hist_types", "hist_gaps_s"])
        ds = ds.map_batches(_retrieval_rows, batch_format="pyarrow",
                            fn_kwargs={"length": history_length, "min_stage": cfg.model.train_min_stage,
                                       "last_split": last_split})
    else:
        ds = ray.data.read_parquet(str(processed / "ranking"), columns=[
            "item_idx", "user_idx", "split", "negative", "hist_items", "hist_types", "hist_gaps_s",
            *RANKING_EXTRA])
        ds = ds.map_batches(_ranking_rows, batch_format="pyarrow",
                            fn_kwargs={"length": history_length, "viewed_negatives": cfg.ranker.viewed_negatives,
                                       "last_split": last_split})
    # By default blocks come out in the order their tasks finish, which varies run to run once the
    # data spans several read tasks (Online Retail): the same seed then trained different models.
    ds.context.execution_options.preserve_order = True
    return ds


def _ordered_ingest() -> Any:
    """Ray Train's default ingest options, with the dataset's block order kept into the workers."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options)


def _worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: wires Ray Train's shard, report and checkpoint into ``LoopIO``."""
    import ray.train
    import ray.train.torch
    import torch

    ctx: ModelContext = config["ctx"]
    set_threads(ctx.cfg.train.threads_per_worker)
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()

    def batches(epoch: int):
        return shard.iter_torch_batches(batch_size=ctx.cfg.train.batch_size, device=device,
                                        local_shuffle_buffer_size=4 * ctx.cfg.train.batch_size,
                                        local_shuffle_seed=ctx.cfg.train.seed + epoch, drop_last=True)

    def report(metrics: dict[str, float], folder: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def run(resume_from: Path | None) -> None:
        io = LoopIO(batches=batches, report=report, resume_from=resume_from, rank=rank, device=device,
                    wrap_model=ray.train.torch.prepare_model, fault=config.get("fault"),
                    autocast=device.type == "cuda", steps_per_epoch=config["steps_per_epoch"])
        if config["kind"] == "two_tower":
            train_retrieval(ctx if rank == 0 else _without_valid(ctx), io)
        else:
            train_ranker(ctx, io, Path(config["retrieval_dir"]))

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run(None)
    else:
        with checkpoint.as_directory() as folder:
            run(Path(folder))
    del torch


def _without_valid(ctx: ModelContext) -> ModelContext:
    return replace(ctx, valid=None)


def _train_data(cfg: RayrecConfig, kind: str, history_length: int) -> Any:
    """The training dataset, materialised up front unless ``train.materialize_data`` is off.

    Streaming re-runs the read and transform every epoch on CPUs the workers do not hold; when the
    workers hold every CPU (2 workers on 2 cores) that work can never be scheduled and training
    would hang, so streaming is refused there with the fix named.
    """
    import ray

    ds = training_dataset(cfg, kind, history_length)
    if cfg.train.materialize_data:
        return ds.materialize()
    t = cfg.train
    spare = ray.cluster_resources().get("CPU", 0) - t.num_workers * t.resources_per_worker.get("CPU", 1)
    if spare < 1:
        raise ConfigError(f"train.materialize_data=false streams data on spare CPUs, but the {t.num_workers} "
                          f"workers hold all of them ({spare:g} left): set train.materialize_data=true or "
                          "lower train.num_workers / train.resources_per_worker.CPU")
    return ds


def run_training(cfg: RayrecConfig, kind: str, ctx: ModelContext | None = None,
                 retrieval_dir: Path | None = None, fault: dict[str, Any] | None = None) -> TrainedModel:
    """Trains one model (``two_tower`` or ``ranker``) with Ray Train; returns its bundle."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    ctx = ctx or load_context(cfg)
    out = Path(t.out_dir).resolve()
    storage = Path(t.storage_path).resolve() if t.storage_path else out / "ray"
    name = f"{cfg.name}-{kind}"
    shutil.rmtree(storage / name, ignore_errors=True)  # a new run, not a resume of an older one
    data = _train_data(cfg, kind, ctx.manifest["history_length"])
    # Each worker reads about 1/num_workers of the rows, in full batches only.
    steps_per_epoch = data.count() // t.num_workers // t.batch_size if t.lr_schedule != "constant" else None
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"ctx": ctx, "kind": kind, "fault": fault, "steps_per_epoch": steps_per_epoch,
                           "retrieval_dir": str(retrieval_dir) if retrieval_dir else None},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=dict(t.resources_per_worker)),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": data},
        dataset_config=_ordered_ingest(),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{kind} training finished without a checkpoint: {result.error}")
    bundle = out / kind
    shutil.rmtree(bundle, ignore_errors=True)
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(folder, bundle)
    metrics = read_history(bundle)
    (out / f"{kind}_{METRICS_CSV}").write_bytes((bundle / METRICS_CSV).read_bytes())
    png = plot_training_curves(metrics, out / f"{kind}_curves.png", title=f"{cfg.name}: {kind}")
    return TrainedModel(kind=kind, bundle=bundle, metrics=metrics, curves_png=png)


def single_process_io(dataset: Any, batch_size: int, seed: int) -> LoopIO:
    """A ``LoopIO`` that iterates a materialised dataset in this process (no Ray Train)."""
    return arrays_io(materialize(dataset), batch_size, seed)


def materialize(dataset: Any) -> dict[str, np.ndarray]:
    """A Ray Dataset's columns as whole numpy arrays in this process."""
    return {k: np.concatenate(v) for k, v in _collect(dataset).items()}


def arrays_io(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> LoopIO:
    """A ``LoopIO`` over in-memory columns: a fresh shuffle per epoch, full batches only."""
    import torch

    with warnings.catch_warnings():  # arrays from Ray's object store are read-only; batches are copies
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    n = len(next(iter(tensors.values())))
    reports: list[dict[str, float]] = []

    def batches(epoch: int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for lo in range(0, n - batch_size + 1, batch_size):
            idx = order[lo:lo + batch_size]
            yield {k: v[idx] for k, v in tensors.items()}

    io = LoopIO(batches=batches, report=lambda m, folder: reports.append(m), steps_per_epoch=n // batch_size)
    io.reports = reports  # type: ignore[attr-defined]
    return io


def _collect(dataset: Any) -> dict[str, list[np.ndarray]]:
    columns: dict[str, list[np.ndarray]] = {}
    for batch in dataset.iter_batches(batch_size=65536, batch_format="numpy"):
        for k, v in batch.items():
            columns.setdefault(k, []).append(v)
    return columns
