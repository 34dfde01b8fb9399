"""Tuned baselines: each baseline's hyperparameters searched with Ray Tune (Optuna's TPE) on the
validation split, with at least the trials rayrec's own tuning gets (``evaluate.baseline_trials``).

A trial fits the baseline on the train period (``EvalSplit("valid").interactions``) and scores its
NDCG@20 over the validation users with history: users without history get the common cold-user
list whatever a system does, so they cannot tell settings apart. The chosen settings are then refit
on everything before the test cutoff by ``run_evaluation``, like every other system.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayrec.config import RayrecConfig, SearchDimension
from rayrec.metrics import ranking_metrics
from rayrec.runtime import set_threads
from rayrec.train.baselines import BASELINES
from rayrec.train.evaluate import EvalSplit, NotRunnable, Recommender
from rayrec.train.systems import subset_users
from rayrec.tune.runner import search_space, tpe_search

OBJECTIVE = "valid_ndcg@20"
# Settings every trial of a baseline gets: one thread each, since trials run side by side.
TRIAL_FIXED: dict[str, dict[str, Any]] = {"implicit_als": {"num_threads": 1}}


@dataclass
class BaselineTuning:
    """One baseline's search: the chosen settings, their validation score and every trial's."""

    name: str
    params: dict[str, Any]
    valid_ndcg: float
    trials: int
    history: list[dict[str, Any]] = field(default_factory=list)
    not_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_baseline(name: str, params: dict[str, Any] | None = None) -> Recommender:
    return BASELINES[name](**{**TRIAL_FIXED.get(name, {}), **(params or {})})


def warm_users(split: EvalSplit) -> EvalSplit:
    """The users with history before the cutoff: the ones a baseline's settings can change."""
    return subset_users(split, np.flatnonzero(~split.no_history))


def score_setting(name: str, params: dict[str, Any], split: EvalSplit, exclude_seen: bool) -> float:
    """Validation NDCG@20 of baseline ``name`` with ``params`` over ``split``'s users with history."""
    system = make_baseline(name, params)
    system.fit(split)
    users = warm_users(split)
    top = system.recommend(users, 20, exclude_seen)
    return float(ranking_metrics(top, users.targets, (20,))["ndcg@20"])


def _trial(config: dict[str, Any], name: str, split: EvalSplit, exclude_seen: bool) -> None:
    from ray import tune

    set_threads(1)
    try:
        tune.report({OBJECTIVE: score_setting(name, config, split, exclude_seen)})
    except NotRunnable as error:
        tune.report({OBJECTIVE: float("nan"), "not_run": str(error)})


def tune_baseline(name: str, space: dict[str, SearchDimension], split: EvalSplit, trials: int, seed: int = 0,
                  exclude_seen: bool = True, max_concurrent: int = 2, storage: Path | None = None) -> BaselineTuning:
    """Searches ``space`` for baseline ``name`` in ``trials`` Ray Tune trials; returns the best."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    storage = storage or Path(tempfile.mkdtemp(prefix="rayrec-baselines-"))
    trainable = tune.with_resources(tune.with_parameters(_trial, name=name, split=split, exclude_seen=exclude_seen),
                                    {"CPU": 1})
    search = ConcurrencyLimiter(tpe_search(trials, seed), max_concurrent=max_concurrent)
    grid = tune.Tuner(trainable, param_space=search_space(space),
                      tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, metric=OBJECTIVE, mode="max"),
                      run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=0)).fit()
    history = [{"params": dict(r.config or {}), OBJECTIVE: float((r.metrics or {}).get(OBJECTIVE, float("nan"))),
                **({"error": str(r.error).splitlines()[0]} if r.error else {}),
                **({"not_run": r.metrics["not_run"]} if r.metrics and "not_run" in r.metrics else {})}
               for r in grid]
    scored = [h for h in history if np.isfinite(h[OBJECTIVE])]
    if not scored:
        reason = next((h.get("not_run") or h.get("error") for h in history), "no trial finished")
        return BaselineTuning(name, {}, float("nan"), len(history), history, not_run=str(reason))
    best = max(scored, key=lambda h: h[OBJECTIVE])
    return BaselineTuning(name, best["params"], best[OBJECTIVE], len(history), history)


def tune_baselines(cfg: RayrecConfig, valid: EvalSplit, storage: Path | None = None) -> dict[str, BaselineTuning]:
    """Every configured baseline: searched when ``evaluate.baseline_space`` has an entry for it, else
    scored once with its constructor's defaults (1 trial)."""
    e = cfg.evaluate
    out: dict[str, BaselineTuning] = {}
    for name in e.baselines:
        space = e.baseline_space.get(name)
        if space:
            out[name] = tune_baseline(name, space, valid, e.baseline_trials, cfg.tune.seed, e.exclude_seen,
                                      storage=storage)
        else:
            out[name] = BaselineTuning(name, {}, score_setting(name, {}, valid, e.exclude_seen), 1)
    return out


def tuned_systems(tunings: dict[str, BaselineTuning]) -> list[Recommender]:
    """The baselines with their chosen settings (a baseline that could not run keeps its defaults, so
    the evaluation reports it as not run with the reason)."""
    return [make_baseline(name, t.params) for name, t in tunings.items()]
