"""The compression stage end to end: a trained ranker → shrunk, fine-tuned (with gradual magnitude
pruning), optionally int8 → a bundle, and the dense and compressed models measured side by side
on quality (validation NDCG/Recall through the same two-stage evaluation), latency and size.

The validation users are cut in two (``choosing_and_judging``): every ranker, the dense reference
included, chooses its score boosts on one half, and its quality is scored on the other, so no
model's number comes from the users that picked its settings.

Fine-tuning runs in this process through the same ``train_ranker`` loop that Ray Train workers
run, fed by ``single_process_io``: the models are small, and inside a Ray Tune trial (the main
user of this stage) the trial process is the worker.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rayrec.artifacts import read_meta
from rayrec.compress.bundle import compression_meta, load_compressed_ranker, save_compressed_ranker
from rayrec.compress.measure import model_size_bytes, parameter_count, scoring_latency
from rayrec.compress.prune import GradualMagnitudePruner, make_permanent, ranker_prune_targets
from rayrec.compress.quantize import INT8_DYNAMIC
from rayrec.compress.shrink import ShrinkRatios, shrink_ranker, structured_record
from rayrec.config import CompressConfig, ConfigError
from rayrec.models.ranker import OPTIONAL_INPUTS, Ranker
from rayrec.train.loop import LoopIO, ModelContext, RankerStart, load_two_tower, train_ranker
from rayrec.train.offline import load_ranker
from rayrec.train.systems import choose_and_judge, fit_boosts, two_stage_metrics
from rayrec.train.trainer import single_process_io, training_dataset

# Pruning re-ranks every weight; once per ~2% of the schedule is smooth enough and keeps the
# embedding tables' sort off the per-step path.
PRUNE_UPDATES = 50


@dataclass
class ModelCost:
    """One ranker's measured quality, latency and size."""

    quality: dict[str, float]
    latency: dict[str, float]
    size_bytes: int
    parameters: dict[str, int]

    def flat(self, prefix: str = "") -> dict[str, float]:
        return {**{f"{prefix}{k}": v for k, v in self.quality.items()},
                f"{prefix}p50_ms": self.latency["p50_ms"], f"{prefix}p99_ms": self.latency["p99_ms"],
                f"{prefix}size_bytes": float(self.size_bytes),
                f"{prefix}parameters": float(self.parameters["total"]),
                f"{prefix}nonzero_parameters": float(self.parameters["nonzero"])}


def measure_ranker(ctx: ModelContext, retrieval_dir: Path, ranker: Ranker, eval_users: int,
                   latency_candidates: int, quality: dict[str, float] | None = None,
                   latency: dict[str, float] | None = None) -> ModelCost:
    """Validation quality of retrieval + ``ranker`` and its CPU scoring latency (1 thread), each
    unless given, and its size."""
    cfg = ctx.cfg
    if quality is None:
        assert ctx.valid is not None, "measuring quality needs the validation split in the context"
        quality = two_stage_metrics(load_two_tower(ctx, retrieval_dir), ranker, ctx.valid, cfg, eval_users)
    if latency is None:
        latency = scoring_latency(ranker, latency_candidates, repeats=100, threads=1,
                                  history_length=int(ctx.manifest["history_length"]))
    return ModelCost(quality=quality, latency=latency, size_bytes=model_size_bytes(ranker),
                     parameters=parameter_count(ranker))


def choosing_and_judging(ctx: ModelContext) -> tuple[ModelContext, ModelContext]:
    """``ctx`` twice, its validation split cut by ``choose_and_judge``: fit and fine-tune (boosts are
    chosen on the validation users) in the first, ``measure_ranker`` in the second."""
    if ctx.valid is None:
        raise ValueError("compression is judged on the validation split; the context has none")
    choose, judge = choose_and_judge(ctx.valid)
    return replace(ctx, valid=choose), replace(ctx, valid=judge)


def fit_reference_boosts(ctx: ModelContext, retrieval_dir: Path, dense: Ranker,
                         eval_users: int) -> dict[str, dict[float, dict[str, float]]]:
    """The dense reference's boosts chosen again on ``ctx``'s validation users, as fine-tuning chooses
    every compressed ranker's (``fit_boosts``; none where the config fixes them), set on ``dense.spec``."""
    assert ctx.valid is not None, "choosing boosts needs the validation split in the context"
    return fit_boosts(load_two_tower(ctx, retrieval_dir), dense, ctx.valid, ctx.cfg, eval_users)


def compress_ranker(ctx: ModelContext, retrieval_dir: Path, ranker: Ranker, io: LoopIO | None,
                    out_dir: Path, c: CompressConfig) -> Path:
    """Shrink ``ranker`` by ``c``'s ratios, fine-tune it on ``io`` with gradual pruning to ``c.sparsity``
    (distilling from ``ranker`` by ``c.distill``), save it (float weights; quantization recorded,
    applied at load). Returns the bundle folder."""
    ratios = ShrinkRatios(deep=c.deep, cross_rank=c.cross_rank, embedding_dim=c.embedding_dim,
                          inputs=tuple(group for group in OPTIONAL_INPUTS if getattr(c, f"drop_{group}")))
    shrunk = shrink_ranker(ranker, ratios, ctx.items)
    pruner = None
    if c.sparsity > 0:
        steps_per_epoch = io.steps_per_epoch if io is not None and io.steps_per_epoch else 1
        total = max(1, c.finetune_epochs * steps_per_epoch)
        pruner = GradualMagnitudePruner(ranker_prune_targets(shrunk), c.sparsity, total,
                                        every=max(1, total // PRUNE_UPDATES))
    if c.finetune_epochs > 0:
        if io is None:
            raise ValueError("fine-tuning needs training batches (io)")
        teacher = copy.deepcopy(ranker).to(io.device).eval() if c.distill > 0 else None
        train_ranker(ctx, io, retrieval_dir, RankerStart(model=shrunk, epochs=c.finetune_epochs, lr=c.finetune_lr,
                                                         on_step=pruner.step if pruner else None,
                                                         teacher=teacher, distill=c.distill))
    elif pruner is not None:
        pruner.prune_to(c.sparsity)  # one-shot: no fine-tuning to spread it over
    if pruner is not None:
        make_permanent(shrunk)
    compression = compression_meta(structured=structured_record(ranker, ratios, shrunk),
                                   unstructured=pruner.summary() if pruner else None,
                                   quantization=INT8_DYNAMIC if c.quantize else None)
    return save_compressed_ranker(out_dir, shrunk.cpu().eval(), _source_meta(ranker, ctx, retrieval_dir),
                                  compression)


def _source_meta(ranker: Ranker, ctx: ModelContext, retrieval_dir: Path) -> dict[str, Any]:
    return {"vocab_fingerprint": ctx.vocab_fingerprint, "config": ctx.cfg.model_dump(mode="json", by_alias=True),
            "retrieval_weights_sha256": read_meta(retrieval_dir)["weights_sha256"],
            "dense_spec": ranker.spec.to_dict()}


def ranker_batches(ctx: ModelContext) -> LoopIO:
    """The ranker's training examples, materialised in this process (needs Ray up for Ray Data)."""
    cfg = ctx.cfg
    return single_process_io(training_dataset(cfg, "ranker", int(ctx.manifest["history_length"])),
                             cfg.train.batch_size, cfg.train.seed)


def run_compression(ctx: ModelContext, models_dir: Path, out_dir: Path | None = None,
                    io: LoopIO | None = None) -> dict[str, Any]:
    """The stage: compress ``<models_dir>/ranker`` into ``out_dir`` and measure dense vs compressed, each
    scored on the validation users disjoint from those its boosts were chosen on."""
    c = ctx.cfg.compress
    if ctx.cfg.train.include_valid:
        raise ConfigError("compression is judged on the validation split: set train.include_valid=false")
    retrieval_dir, ranker_dir = models_dir / "two_tower", models_dir / "ranker"
    out = out_dir or Path(c.out_dir or models_dir / "ranker_compressed")
    choose, judge = choosing_and_judging(ctx)
    users = ctx.cfg.train.eval_users
    dense = load_ranker(ctx, ranker_dir)
    # Training chose the dense boosts on validation users of both halves: choose them again on this half.
    fit_reference_boosts(choose, retrieval_dir, dense, users)
    if io is None and c.finetune_epochs > 0:
        io = ranker_batches(ctx)
    bundle = compress_ranker(choose, retrieval_dir, dense, io, out, c)
    compressed = load_compressed_ranker(bundle, ctx.items, ctx.vocab_fingerprint)
    # compress_ranker shrinks a copy: dense is as it was
    before = measure_ranker(judge, retrieval_dir, dense, users, c.latency_candidates)
    after = measure_ranker(judge, retrieval_dir, compressed, users, c.latency_candidates)
    return {"bundle": str(bundle), "compression": read_meta(bundle)["compression"],
            "dense": before.flat(), "compressed": after.flat()}
