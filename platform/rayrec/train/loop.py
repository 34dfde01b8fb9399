"""The per-worker training loops for the retrieval and ranking models; they run with or without Ray.

A loop gets its batches, a way to report an epoch (metrics + checkpoint folder) and an optional
checkpoint to resume from through ``LoopIO``, so the same code runs as a Ray Train worker
(``trainer.py`` supplies ``get_dataset_shard``/``report``/``get_checkpoint``) and as a plain
single-process loop (tests and the throughput benchmark).
"""

from __future__ import annotations

import csv
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from rayrec.artifacts import load_bundle, load_optimizer_state, load_two_tower_model, read_meta, save_bundle
from rayrec.config import RayrecConfig, TrainConfig
from rayrec.features.items import ItemFeatureTable
from rayrec.features.trend import DAY_MS, ItemTrend, TrendingPools
from rayrec.models.losses import distillation_bce, in_batch_softmax_loss, mixed_log_q, multi_task_bce
from rayrec.models.ranker import Ranker, RankerSpec
from rayrec.models.two_tower import TwoTowerModel, TwoTowerSpec
from rayrec.train.evaluate import EvalSplit
from rayrec.train.collaborative import fit_item_factors
from rayrec.train.systems import BOOST_GRIDS, VALID_KS, fit_boosts, retrieval_metrics, two_stage_metrics

Batch = dict[str, torch.Tensor]
METRICS_CSV = "metrics.csv"


@dataclass
class LoopIO:
    """What a loop needs from its runner."""

    batches: Callable[[int], Iterable[Batch]]  # epoch -> batches of this worker's shard
    report: Callable[[dict[str, float], Path | None], None]  # metrics, checkpoint folder (rank 0) or None
    resume_from: Path | None = None
    rank: int = 0
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fault: dict[str, Any] | None = None  # test-only: {"epoch", "after_batches", "marker", "delay_s", "epoch_log"}
    autocast: bool = False  # bf16 autocast on GPU
    steps_per_epoch: int | None = None  # this worker's optimizer steps per epoch; the cosine schedule needs it

    def precision(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast)


@dataclass
class ModelContext:
    """Everything both loops build from the processed data, once per worker."""

    cfg: RayrecConfig
    manifest: dict[str, Any]
    items: ItemFeatureTable
    valid: EvalSplit | None
    trend: ItemTrend | None = None  # the training interactions, for the ranker's per-example trend counts
    interactions: sp.csr_matrix | None = None  # users x items counts the ranker's ALS factors are fitted on

    @property
    def vocab_fingerprint(self) -> str:
        return str(self.manifest["vocab_fingerprint"])


def two_tower_spec(ctx: ModelContext) -> TwoTowerSpec:
    v, m = ctx.manifest["vocab_sizes"], ctx.cfg.model
    return TwoTowerSpec(
        n_items=v["items"], n_users=v["users"], n_categories=v["categories"], n_brands=v["brands"],
        n_price_buckets=len(ctx.manifest["price_bucket_edges"]) + 2, n_tokens=v["tokens"],
        title_tokens=ctx.items.title.shape[1], history_length=ctx.manifest["history_length"],
        dim=m.dim, hidden=m.hidden, heads=m.heads, use_user_id=m.use_user_id,
    )  # fmt: skip


def build_two_tower(ctx: ModelContext, spec: TwoTowerSpec | None = None) -> TwoTowerModel:
    m = ctx.cfg.model
    return TwoTowerModel(spec or two_tower_spec(ctx), ctx.items, id_dropout=m.id_dropout,
                         temperature=m.temperature, learn_temperature=m.learn_temperature,
                         user_dropout=m.user_dropout)


def ranker_spec(ctx: ModelContext) -> RankerSpec:
    """The ranker's shape from the data's vocabularies and ``cfg.ranker``: every spec field named like a
    config field is taken from it, so a new ranker setting is written in the config and the spec only.
    A boost still to be fitted (null) starts at 0."""
    v, r = ctx.manifest["vocab_sizes"], ctx.cfg.ranker
    shared = {f.name for f in fields(RankerSpec)} & set(type(r).model_fields)
    settings = {name: getattr(r, name) for name in shared}
    settings.update(deep_layers=list(r.deep_layers), trend_boost=r.trend_boost or 0.0,
                    collaborative_boost=r.collaborative_boost or 0.0)
    return RankerSpec(n_items=v["items"], n_categories=v["categories"], n_brands=v["brands"],
                      n_price_buckets=len(ctx.manifest["price_bucket_edges"]) + 2, user_dim=ctx.cfg.model.dim,
                      **settings)


def _item_prob(items: ItemFeatureTable) -> torch.Tensor:
    """Each item's share of the training positives: how in-batch negatives are sampled."""
    counts = items.popularity + 1.0  # +1: never log(0) for an item absent from training
    return torch.as_tensor(counts / counts.sum(), dtype=torch.float64)


def _maybe_inject_fault(io: LoopIO, epoch: int, batch_no: int) -> None:
    """Test-only: kill this worker process for real, once, mid-epoch (a marker file makes it once)."""
    f = io.fault
    if not f or io.rank != 0 or epoch != f["epoch"] or batch_no != f["after_batches"]:
        return
    marker = Path(f["marker"])
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    # Ray Train's controller collects a worker's reports when it polls (every 2 s by default); a
    # worker dying before the poll after its last report loses that checkpoint, so a realistic
    # crash "some seconds into the epoch" waits here first.
    time.sleep(float(f.get("delay_s", 0)))
    os.kill(os.getpid(), signal.SIGKILL)


def _log_epoch_start(io: LoopIO, epoch: int) -> None:
    if io.fault and io.rank == 0 and io.fault.get("epoch_log"):
        with open(io.fault["epoch_log"], "a") as fh:
            fh.write(f"{epoch}\n")


def _resume(io: LoopIO, model: nn.Module, optimizer: torch.optim.Optimizer, kind: str,
            fingerprint: str) -> tuple[int, list[dict[str, Any]]]:
    """(first epoch to run, metric rows so far) from the checkpoint handed to this run, if any."""
    if io.resume_from is None:
        return 0, []
    state, meta = load_bundle(io.resume_from, kind, fingerprint)
    model.load_state_dict(state)
    opt_state = load_optimizer_state(io.resume_from)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    return int(meta["epoch"]) + 1, read_history(io.resume_from)


def read_history(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS_CSV
    if not path.is_file():
        return []
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _write_history(directory: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(directory / METRICS_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _end_epoch(io: LoopIO, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
               history: list[dict[str, Any]], metrics: dict[str, float]) -> None:
    history.append(metrics)
    if io.rank != 0:
        io.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="rayrec-ckpt-") as tmp:
        folder = Path(tmp)
        save_bundle(folder, model, {**meta, "epoch": int(metrics["epoch"]), "metrics": metrics}, optimizer)
        _write_history(folder, history)
        io.report(metrics, folder)


def set_scheduled_lr(optimizer: torch.optim.Optimizer, t: TrainConfig, base: float, epochs: int, epoch: int,
                     step: int, steps_per_epoch: int | None) -> None:
    """The learning rate for ``step`` of ``epoch`` of an ``epochs``-long run under ``t.lr_schedule``.
    Computed from the position alone, so a resumed run continues the same curve."""
    if t.lr_schedule == "constant":
        lr = base
    elif not steps_per_epoch:
        raise ValueError("train.lr_schedule=cosine needs the run's steps per epoch (LoopIO.steps_per_epoch)")
    else:
        progress = min((epoch * steps_per_epoch + step) / max(epochs * steps_per_epoch - 1, 1), 1.0)
        lr = base * (t.lr_floor + (1 - t.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_retrieval(ctx: ModelContext, io: LoopIO) -> None:
    cfg = ctx.cfg
    torch.manual_seed(cfg.train.seed + io.rank)
    spec = two_tower_spec(ctx)
    model = build_two_tower(ctx, spec).to(io.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start, history = _resume(io, model, optimizer, "two_tower", ctx.vocab_fingerprint)
    wrapped = io.wrap_model(model)
    item_prob = _item_prob(ctx.items).to(io.device)
    n_uniform = cfg.model.uniform_negatives
    meta = {"kind": "two_tower", "spec": spec.to_dict(), "vocab_fingerprint": ctx.vocab_fingerprint,
            "config": cfg.model_dump(mode="json", by_alias=True)}
    for epoch in range(start, cfg.train.epochs):
        _log_epoch_start(io, epoch)
        model.train()
        losses, seen, t0 = [], 0, time.perf_counter()
        for i, batch in enumerate(io.batches(epoch)):
            _maybe_inject_fault(io, epoch, i)
            with io.precision():
                user, item = wrapped(batch["hist_items"], batch["hist_types"], batch["hist_gaps"], batch["user_idx"],
                                     batch["item_idx"])
                ids = torch.randint(2, spec.n_items, (n_uniform,), device=io.device) if n_uniform else None
                extra = model.item_embedding(ids).float() if ids is not None else None
                log_q = extra_log_q = None
                if cfg.model.logq_correction:  # only the batch's and the extras' items, not the catalog
                    b = len(batch["item_idx"])
                    log_q = mixed_log_q(item_prob[batch["item_idx"]], b, n_uniform, spec.n_items - 2)
                    if ids is not None:
                        extra_log_q = mixed_log_q(item_prob[ids], b, n_uniform, spec.n_items - 2)
                loss = in_batch_softmax_loss(user.float(), item.float(), batch["item_idx"], model.temperature,
                                             log_q, extra, ids, extra_log_q)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_scheduled_lr(optimizer, cfg.train, cfg.train.lr, cfg.train.epochs, epoch, i, io.steps_per_epoch)
            optimizer.step()
            losses.append(loss.item())
            seen += len(batch["item_idx"])
        metrics = {"epoch": float(epoch), "loss": float(np.mean(losses)) if losses else float("nan"),
                   "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                   "temperature": float(model.temperature.detach())}
        if io.rank == 0 and ctx.valid is not None:
            metrics.update(retrieval_metrics(model, ctx.valid, cfg.train.eval_users, VALID_KS, cfg.evaluate.exclude_seen))
        _end_epoch(io, model, optimizer, meta, history, metrics)


def load_two_tower(ctx: ModelContext, directory: Path) -> TwoTowerModel:
    """A trained retrieval model from its bundle, in eval mode, checked against the data's vocabulary."""
    return load_two_tower_model(directory, ctx.items, ctx.vocab_fingerprint)


@dataclass
class RankerStart:
    """A ranker run that fine-tunes a given model (e.g. a structurally pruned one) instead of
    training a fresh one: its epochs and learning rate, a hook after every optimizer step (gradual
    pruning), and optionally a teacher whose probabilities on the same candidates are the targets
    for a ``distill`` share of the loss (the labels keep the rest)."""

    model: Ranker
    epochs: int
    lr: float
    on_step: Callable[[], None] | None = None
    teacher: Ranker | None = None
    distill: float = 0.0


def train_ranker(ctx: ModelContext, io: LoopIO, retrieval_dir: Path, begin: RankerStart | None = None) -> None:
    """BCE on ranking examples plus hard negatives mined on the fly from the retrieval top-K."""
    cfg, r = ctx.cfg, ctx.cfg.ranker
    torch.manual_seed(cfg.train.seed + 100 + io.rank)
    retrieval = load_two_tower(ctx, retrieval_dir).to(io.device)
    for p in retrieval.parameters():
        p.requires_grad_(False)
    item_vecs = retrieval.all_item_embeddings()
    model = begin.model if begin else _new_ranker(ctx)
    model = model.to(io.device)
    epochs, lr = (begin.epochs, begin.lr) if begin else (cfg.train.ranker_epochs, cfg.train.lr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.train.weight_decay)
    start, history = _resume(io, model, optimizer, "ranker", ctx.vocab_fingerprint)
    wrapped = io.wrap_model(model)
    pools = (TrendingPools.daily(_trend(ctx), model.spec.trend_window_days, r.trending_negative_pool,
                                 model.spec.n_items) if r.trending_negatives or r.serving_pool_only else None)
    meta = {"kind": "ranker", "spec": model.spec.to_dict(), "vocab_fingerprint": ctx.vocab_fingerprint,
            "retrieval_weights_sha256": read_meta(retrieval_dir)["weights_sha256"],
            "config": cfg.model_dump(mode="json", by_alias=True)}
    for epoch in range(start, epochs):
        _log_epoch_start(io, epoch)
        model.train()
        losses, seen, t0 = [], 0, time.perf_counter()
        for i, batch in enumerate(io.batches(epoch)):
            _maybe_inject_fault(io, epoch, i)
            with torch.no_grad():
                user = retrieval.user_embedding(batch["hist_items"], batch["hist_types"], batch["hist_gaps"],
                                                batch["user_idx"])
                # One retrieval top-k per batch, for the hard negatives and the serving-pool test alike.
                k = max(r.hard_negative_pool, cfg.evaluate.candidates) if r.serving_pool_only else r.hard_negative_pool
                top = _retrieval_top(user, item_vecs, k) if r.hard_negatives or r.serving_pool_only else None
                cand, labels = _with_hard_negatives(batch, top, r.hard_negative_pool, r.hard_negatives)
                day_pools = (None if pools is None else
                             torch.from_numpy(pools.of(batch["ts_ms"].cpu().numpy())).to(io.device))
                if day_pools is not None and r.trending_negatives:
                    cand, labels = _with_trending_negatives(batch, cand, labels, day_pools, r.trending_negatives)
                score = (user.unsqueeze(1) * item_vecs[cand]).sum(-1)
                trend = _trend_counts(ctx, model.spec, cand, batch["ts_ms"], r.trend_staleness_days)
            with io.precision():
                logits = wrapped(user, batch["hist_items"], batch["hist_gaps_s"], cand, score, trend)
            real = (cand > 0).float()  # masked hard-negative slots carry no loss
            if r.serving_pool_only:
                assert top is not None  # computed whenever serving_pool_only is on
                real = real * _in_serving_pool(batch, top[:, :cfg.evaluate.candidates], day_pools).unsqueeze(1)
            real = real.reshape(-1, 1)
            flat, targets = logits.float().reshape(-1, 2), labels.reshape(-1, 2)
            if begin and begin.teacher is not None and begin.distill > 0:
                with torch.no_grad():
                    teacher = begin.teacher(user, batch["hist_items"], batch["hist_gaps_s"], cand, score, trend)
                loss = distillation_bce(flat, targets, teacher.reshape(-1, 2), begin.distill, real)
            else:
                loss = multi_task_bce(flat, targets, real)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_scheduled_lr(optimizer, cfg.train, lr, epochs, epoch, i, io.steps_per_epoch)
            optimizer.step()
            if begin and begin.on_step:
                begin.on_step()
            losses.append(loss.item())
            seen += cand.numel()
        metrics = {"epoch": float(epoch), "loss": float(np.mean(losses)) if losses else float("nan"),
                   "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
        if io.rank == 0 and ctx.valid is not None:
            # A fine-tuned (e.g. compressed) ranker gets its own boosts too: they weigh the trend and the
            # ALS score against the ranker's probabilities, and fine-tuning moves their scale (MovieLens:
            # the dense ranker fine-tuned one more epoch under its old boost lost 3.4% of validation NDCG@20).
            fits = fit_boosts(retrieval, model, ctx.valid, cfg, cfg.train.eval_users) if epoch == epochs - 1 else {}
            if fits:
                meta.update(spec=model.spec.to_dict(),
                            **{f"{name}_fit": {f"{b:g}": m for b, m in fit.items()} for name, fit in fits.items()})
                name, fit = list(fits.items())[-1]  # the last boost fitted scored the final settings
                metrics.update(fit[getattr(model.spec, name)])
            else:
                metrics.update(two_stage_metrics(retrieval, model, ctx.valid, cfg, cfg.train.eval_users))
            # Earlier epochs score under the spec's boost (0 unless set), the last under the fitted one:
            # the curves mark the change, so the last epoch's jump is not read as learning.
            metrics.update({name: float(getattr(model.spec, name)) for name in BOOST_GRIDS})
        _end_epoch(io, model, optimizer, meta, history, metrics)


def _new_ranker(ctx: ModelContext) -> Ranker:
    """An untrained ranker; with ``ranker.collaborative_factors`` its ALS item table fitted on
    ``ctx.interactions`` (every worker fits the same table: the fit is seeded)."""
    model = Ranker(ranker_spec(ctx), ctx.items)
    if model.spec.collaborative_factors:
        if ctx.interactions is None:
            raise ValueError("ranker.collaborative_factors needs ModelContext.interactions (the training interactions)")
        table = fit_item_factors(ctx.interactions, model.spec.collaborative_factors, seed=ctx.cfg.train.seed + 42)
        model.set_collaborative_items(torch.from_numpy(table))
    return model


def _trend_counts(ctx: ModelContext, spec: RankerSpec, cand: torch.Tensor, ts_ms: torch.Tensor,
                  staleness_days: float) -> torch.Tensor:
    """Each candidate's interactions in the trend window before its example's own time, or before a
    random moment up to ``staleness_days`` earlier."""
    at = ts_ms.cpu().numpy()
    if staleness_days > 0:
        lag = torch.rand(len(at)).numpy() * staleness_days * DAY_MS
        at = at - lag.astype(np.int64)
    counts = _trend(ctx).counts(cand.cpu().numpy(), at[:, None], spec.trend_window_days)
    return torch.from_numpy(counts).to(cand.device)


def _trend(ctx: ModelContext) -> ItemTrend:
    if ctx.trend is None:
        raise ValueError("training the ranker needs ModelContext.trend (the training interactions)")
    return ctx.trend


def _with_hard_negatives(batch: Batch, top: torch.Tensor | None, pool: int,
                         n_hard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates [B, 1 + n_hard] and labels [B, 1 + n_hard, 2]: the example's own item first, then
    ``n_hard`` items drawn from the first ``pool`` of ``top`` (the retrieval top-K per row, best first;
    never the example's item) for positives."""
    own = batch["item_idx"].unsqueeze(1)
    labels = torch.stack([batch["label_click"], batch["label_purchase"]], -1).unsqueeze(1).float()
    if n_hard == 0 or top is None:
        return own, labels
    top = top[:, :pool]
    picks = top.gather(1, torch.randint(0, top.shape[1], (len(top), n_hard), device=top.device))
    return _append_negatives(batch, own, labels, picks)


def _retrieval_top(user: torch.Tensor, item_vecs: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] ids of the retrieval model's top ``k`` real items (never padding/unknown) per user, best first."""
    scores = user @ item_vecs.T
    scores[:, :2] = -torch.inf
    return scores.topk(min(k, scores.shape[1] - 2), dim=1).indices


def _in_serving_pool(batch: Batch, retrieved: torch.Tensor, day_pools: torch.Tensor | None) -> torch.Tensor:
    """[B] 1.0 for positive examples whose item a request would have put before the ranker (among the
    ``retrieved`` ids [B, k] or the day's trending pool), else 0.0."""
    own = batch["item_idx"].unsqueeze(1)
    hit = (retrieved == own).any(1)
    if day_pools is not None:
        hit = hit | (day_pools == own).any(1)
    return (hit & (batch["label_click"] > 0)).float()


def _with_trending_negatives(batch: Batch, cand: torch.Tensor, labels: torch.Tensor, pools: torch.Tensor,
                             n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` more negatives per positive drawn from ``pools`` ([B, P], 0-padded on the right): the
    items trending on each example's day, which a request that day gets as candidates beside
    retrieval's; without them the ranker learns to tell trending items from random and retrieved
    ones, not to order them (Online Retail: the fitted trend boost sat at the grid's top)."""
    count = (pools > 0).sum(1, keepdim=True)
    slots = (torch.rand(len(pools), n, device=pools.device) * count).long().clamp(max=pools.shape[1] - 1)
    return _append_negatives(batch, cand, labels, pools.gather(1, slots))


def _append_negatives(batch: Batch, cand: torch.Tensor, labels: torch.Tensor,
                      picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``picks`` [B, n] appended to ``cand`` as negatives of the positive examples."""
    # A pick that is the example's own item becomes padding id 0, which the loss masks; so do the
    # picks of negative examples (viewed/random rows: negatives of negatives teach nothing).
    is_pos = (batch["label_click"] > 0).unsqueeze(1)
    picks = torch.where(is_pos & (picks != batch["item_idx"].unsqueeze(1)), picks, torch.zeros_like(picks))
    neg_labels = torch.zeros(len(cand), picks.shape[1], 2, device=cand.device)
    return torch.cat([cand, picks], 1), torch.cat([labels, neg_labels], 1)
