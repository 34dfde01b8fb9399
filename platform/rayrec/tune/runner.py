"""`rayrec tune`: a Ray Tune experiment over training and compression settings.

Search: Optuna's multi-objective TPE through Ray Tune's ``OptunaSearch`` (maximise validation
NDCG@20, minimise p99 scoring latency), with ASHA stopping trials whose NDCG lags after
``grace_period`` epochs, at most ``max_concurrent`` trials at once, each with
``resources_per_trial`` (fractional GPU allowed). The experiment lives under
``<tune.out_dir>/experiment``; running again with ``resume`` continues it (``Tuner.restore``):
finished trials are kept, unfinished ones start over.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrec.config import ConfigError, RayrecConfig, SearchDimension, with_values
from rayrec.train.trainer import load_context, materialize, run_training, training_dataset
from rayrec.tune.report import (LATENCY, QUALITY, TrialRow, choose, pareto_front, plot_pareto, write_chosen_config,
                                write_markdown)
from rayrec.tune.trial import run_trial, trial_config

EXPERIMENT = "experiment"


@dataclass
class TuneOutcome:
    rows: list[TrialRow]
    front: list[TrialRow]
    chosen: TrialRow
    within_budget: bool
    report_md: Path
    pareto_png: Path
    chosen_yaml: Path


def search_space(space: dict[str, SearchDimension]) -> dict[str, Any]:
    """Config dimensions → Ray Tune's sampling domains (keys stay dotted config keys)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in space.items():
        if d.type == "choice":
            out[key] = tune.choice(list(d.values or []))
        elif d.type == "int":
            out[key] = tune.randint(int(d.low), int(d.high) + 1)  # type: ignore[arg-type]
        elif d.type == "loguniform":
            out[key] = tune.loguniform(d.low, d.high)
        else:
            out[key] = tune.uniform(d.low, d.high)
    return out


def tpe_search(trials: int, seed: int, **objective: Any) -> Any:
    """Optuna's TPE for a search of ``trials`` trials: the first half are random start-up draws, the
    rest are proposed from what scored well. Optuna's default start-up is 10 random draws, so a search of
    10 trials or fewer would be pure random search, the same draws on every dataset for a fixed seed."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = max(2, trials // 2)
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed, multivariate=True)
    return OptunaSearch(sampler=sampler, **objective)


def _shared_retrieval(cfg: RayrecConfig) -> Path | None:
    """One retrieval model for every trial, unless the space samples retrieval settings."""
    if any(key.startswith("model.") for key in cfg.tune.space):
        return None
    bundle = Path(cfg.train.out_dir).resolve() / "two_tower"
    if not (bundle / "meta.json").exists():
        run_training(cfg, "two_tower", load_context(cfg))
    return bundle


def _tuner(cfg: RayrecConfig, out: Path, retrieval: Path | None, resume: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    t = cfg.tune
    # Ray Tune runs each trial with its own folder as the working directory: relative paths would
    # point into it, so trials get the data and output folders as absolute paths.
    base = with_values(cfg, {"preprocess.out_dir": str(Path(cfg.preprocess.out_dir).resolve()),
                             "train.out_dir": str(Path(cfg.train.out_dir).resolve())}).model_dump(mode="json", by_alias=True)
    length = int(load_context(cfg, with_valid=False).manifest["history_length"])
    retrieval_rows = None if retrieval else materialize(training_dataset(cfg, "two_tower", length))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, retrieval_dir=str(retrieval) if retrieval else None,
                             ranker_rows=materialize(training_dataset(cfg, "ranker", length)),
                             retrieval_rows=retrieval_rows),
        dict(t.resources_per_trial))
    path = out / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    shutil.rmtree(path, ignore_errors=True)
    search = ConcurrencyLimiter(tpe_search(t.num_samples, t.seed, metric=[QUALITY, LATENCY], mode=["max", "min"]),
                                max_concurrent=t.max_concurrent)
    # max_t counts reports: one per ranker epoch, then one for the compressed model.
    asha = ASHAScheduler(metric=QUALITY, mode="max", max_t=t.epochs + 1, grace_period=min(t.grace_period, t.epochs))
    return tune.Tuner(trainable, param_space=search_space(t.space),
                      tune_config=tune.TuneConfig(search_alg=search, scheduler=asha, num_samples=t.num_samples),
                      run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=0))


def run_tune(cfg: RayrecConfig, resume: bool = False) -> TuneOutcome:
    if not cfg.tune.space:
        raise ValueError("tune.space is empty: give at least one dimension (see configs/demo.yaml)")
    if cfg.train.include_valid:
        raise ConfigError("tune selects on the validation split: set train.include_valid=false (refit afterwards)")
    out = Path(cfg.tune.out_dir or Path(cfg.train.out_dir) / "tune").resolve()
    out.mkdir(parents=True, exist_ok=True)
    grid = _tuner(cfg, out, _shared_retrieval(cfg), resume).fit()
    rows = [TrialRow(trial=str((r.metrics or {}).get("trial_id", f"trial-{i}")),
                     params={k: v for k, v in (r.config or {}).items()}, metrics=dict(r.metrics or {}),
                     error=str(r.error).splitlines()[0] if r.error else None)
            for i, r in enumerate(grid)]
    front = pareto_front(rows)
    chosen, within = choose(rows, cfg.tune)
    chosen_yaml = write_chosen_config(trial_config(cfg.model_dump(mode="json", by_alias=True), chosen.params),
                                      out / "chosen.yaml")
    md = write_markdown(rows, front, chosen, within, cfg.tune, out / "tune_report.md")
    png = plot_pareto(rows, front, chosen, out / "pareto.png")
    return TuneOutcome(rows=rows, front=front, chosen=chosen, within_budget=within, report_md=md, pareto_png=png,
                       chosen_yaml=chosen_yaml)
