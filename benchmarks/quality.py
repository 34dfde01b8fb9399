"""Offline quality benchmark: every system on every dataset, in one run, on the same temporal split.

For the synthetic demo data and each real dataset in ../shared/datasets: preprocess, train the
two-tower model and the ranker with Ray Train, tune every baseline on the validation split with Ray
Tune (``evaluate.baseline_space``, ``evaluate.baseline_trials`` trials each: most-popular,
recently-popular, item-kNN, EASE, SASRec and the peer, `implicit` ALS and BPR), choose one cold-user
policy on validation for all systems, then score everything once by full ranking on the test split.
Prints one table per dataset with all / warm (history before the cutoff) / cold users apart, the
ratio of the two-stage system (``HEADLINE``) to the best baseline on Recall@20 / NDCG@20 over warm
users (the headline) and over all users, every system's validation NDCG@20 (where settings are
chosen, so where a peer that wins tells rayrec what to adopt), and writes benchmarks/results/quality.json with each
baseline's chosen settings and trial count (``--out``).
``--seeds`` trains rayrec's models once per training seed and quotes the ratio of their mean (one
draw of the demo's models moves its NDCG@20 by several percent). ``--refit`` adds rayrec's models
refit on train + valid (the baselines are fitted on everything before the test cutoff; rayrec's
models on the train split, where their settings are chosen).

    python benchmarks/quality.py [--datasets demo,movielens-100k,online-retail] [--seeds 0,1,2] [--quick] [--refit]
    python benchmarks/quality.py --validation-only --out FILE   # adds the validation scores to a finished run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from run_record import git_state

from rayrec.artifacts import read_meta
from rayrec.config import RayrecConfig, load_config
from rayrec.data.preprocess import run_preprocess
from rayrec.data.synthetic import generate
from rayrec.metrics import paired_ratio_interval
from rayrec.runtime import init_ray
from rayrec.train.loop import ModelContext
from rayrec.train.cold_start import ColdStartChoice, choose_cold_start
from rayrec.train.offline import eval_split, run_evaluation
from rayrec.train.systems import BOOST_GRIDS
from rayrec.train.trainer import load_context, run_training
from rayrec.tune.baselines import tune_baselines, tuned_systems

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = {"demo": "demo.yaml", "movielens-100k": "movielens-100k.yaml", "online-retail": "online-retail.yaml"}
OURS = ("two_tower", "two_tower+ranker")
REFIT = " (train+valid)"
HEADLINE = "two_tower+ranker"  # the one system the ratio is quoted for, fixed before the run
METRICS = ("recall@20", "ndcg@20")  # the ratio's metrics (evaluate keeps their per-user values)
console = Console(width=180)


def dataset_config(name: str, extra: list[str] | None = None) -> RayrecConfig:
    """The dataset's config with every output (and a synthetic dataset's raw data) under its run folder."""
    work = RESULTS / "quality" / name
    overrides = [f"preprocess.out_dir={work / 'processed'}", f"train.out_dir={work / 'runs'}",
                 f"evaluate.out_dir={work / 'report'}", f"serve.release_dir={work / 'serving'}", *(extra or [])]
    cfg = load_config(REPO / "configs" / CONFIGS[name], overrides)
    chosen = any(o.startswith("evaluate.baselines=") for o in extra or [])
    if not chosen and "sasrec" not in cfg.evaluate.baselines:  # opt-in for `rayrec evaluate`, always run here
        overrides.append(f"evaluate.baselines=[{','.join([*cfg.evaluate.baselines, 'sasrec'])}]")
    if cfg.generate is not None:
        overrides += [f"generate.out_dir={work / 'raw'}", f"source.events={work / 'raw' / 'events'}",
                      f"source.catalog={work / 'raw' / 'catalog.csv'}"]
    return load_config(REPO / "configs" / CONFIGS[name], overrides)


def _train_both(cfg: RayrecConfig) -> tuple[ModelContext, Path]:
    """Both models under ``cfg.train.out_dir``; returns the context and the ranker's bundle."""
    ctx = load_context(cfg)
    retrieval = run_training(cfg, "two_tower", ctx)
    return ctx, run_training(cfg, "ranker", ctx, retrieval_dir=retrieval.bundle).bundle


def _seed_dirs(work: Path, seed: int) -> list[str]:
    """Seed 0 trains under runs/ (the single-seed layout); another seed under runs_seed<N>/."""
    if seed == 0:
        return []
    return [f"train.out_dir={work / f'runs_seed{seed}'}", f"evaluate.out_dir={work / f'report_seed{seed}'}"]


def choose_on_validation(cfg: RayrecConfig, ctx: ModelContext, work: Path) -> tuple[list, dict, object]:
    """Every baseline tuned and the cold-user policy chosen on the validation split, before any test score."""
    valid = eval_split(cfg, ctx, "valid")
    console.print(f"tuning {len(cfg.evaluate.baselines)} baselines on validation, "
                  f"{cfg.evaluate.baseline_trials} trials each (where a space is set)")
    tunings = tune_baselines(cfg, valid, storage=work / "baseline_tune")
    cold = choose_cold_start(valid, cfg.evaluate.cold_start_windows, cfg.evaluate.exclude_seen)
    console.print(f"cold-user policy: {cold.describe()} (validation NDCG@20 {cold.valid_ndcg})")
    return tuned_systems(tunings), {n: t.to_dict() for n, t in tunings.items()}, cold


def validation_scores(cfg: RayrecConfig, ctx: ModelContext, cold: ColdStartChoice,
                      tunings: dict[str, dict]) -> dict[str, float]:
    """NDCG@20 over the validation users with history, the figure every setting is chosen on: rayrec's
    models (trained on the train period, boosts chosen on this split) beside each baseline's best trial
    (fitted on the same period, chosen on the same users). Both are the best of their own search on
    these users, so neither is favoured; a peer ahead here is what rayrec should learn from."""
    out = str(Path(cfg.train.out_dir).parent / "report_valid")
    valid_cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"out_dir": out})})
    table, _ = run_evaluation(valid_cfg, ctx, split="valid", baselines=[], cold_start=cold)
    ours = {r["system"]: float(r[_column("ndcg@20", "warm")]) for r in table.to_dict(orient="records")}
    return {**{_system_name(t): float(t["valid_ndcg"]) for t in tunings.values()}, **ours}


def add_validation(out: Path, overrides: list[str]) -> None:
    """``--validation-only``: the validation scores of a finished run's datasets, from its run folders
    (rayrec's trained models) and its JSON (each baseline's best trial and the cold-user policy)."""
    record = json.loads(out.read_text())
    for result in record["results"]:
        cfg = dataset_config(result["dataset"], overrides)
        cold = ColdStartChoice(result["cold_start"]["window_days"], result["cold_start"]["valid_ndcg@20"])
        result["validation"] = validation_scores(cfg, load_context(cfg), cold, result["baselines"])
        print_validation(result)
    record["validation_added"] = run_record()
    out.write_text(json.dumps(record, indent=2, default=_json_value))
    console.print(f"wrote {out}")


def run_dataset(name: str, quick: bool, refit: bool, seeds: list[int], extra: list[str]) -> dict:
    """Preprocess once, then per training seed train both models and score them on the test split; the
    baselines (no training seed) are tuned on validation and scored with the first seed's run only."""
    epochs = (["train.epochs=1", "train.ranker_epochs=1"] if quick else []) + extra
    cfg = dataset_config(name, epochs)
    work = Path(cfg.train.out_dir).parent
    t0 = time.perf_counter()
    if cfg.generate is not None:
        generate(cfg.generate.out_dir, scale=cfg.generate.scale, seed=cfg.generate.seed)
    run_preprocess(cfg)
    tables, boosts, ours_per_user = [], {}, []
    baselines, tunings, cold = choose_on_validation(cfg, load_context(cfg), work)
    for i, seed in enumerate(seeds):
        seed_cfg = dataset_config(name, [*epochs, f"train.seed={seed}", *_seed_dirs(work, seed),
                                         *([] if i == 0 else ["evaluate.baselines=[]"])])
        ctx, ranker = _train_both(seed_cfg)
        if i == 0:
            validation = validation_scores(seed_cfg, ctx, cold, tunings)
        table, info = run_evaluation(seed_cfg, ctx, baselines=baselines if i == 0 else [], cold_start=cold)
        table["seed"] = [seed if _is_ours(system) else None for system in table["system"]]
        tables.append(table)
        ours_per_user.append(table.attrs["per_user"][HEADLINE])
        spec = read_meta(ranker)["spec"]
        boosts[seed] = {name: spec.get(name, 0.0) for name in BOOST_GRIDS}
    intervals = {}
    warm = ~np.asarray(info["cold_mask"])
    for segment, mask in (("warm", warm), ("all", np.ones_like(warm))):
        for metric in METRICS:  # paired over test users: the seeds' mean per user vs the best baseline's
            base_name, _ = _best_baseline(tables[0].to_dict(orient="records"), _column(metric, segment))
            ours = np.mean([u[metric] for u in ours_per_user], axis=0)
            theirs = tables[0].attrs["per_user"][base_name][metric]
            intervals[f"{metric} {segment}"] = paired_ratio_interval(ours[mask], theirs[mask])
    table = pd.concat(tables, ignore_index=True)
    if refit:  # the same settings (epochs, the boosts chosen on validation), learning from valid too
        chosen = [f"ranker.{k}={v}" for k, v in boosts[seeds[0]].items()]
        refit_cfg = dataset_config(name, [*epochs, f"train.seed={seeds[0]}", "train.include_valid=true",
                                          *chosen, f"train.out_dir={work / 'runs_refit'}",
                                          "evaluate.baselines=[]", f"evaluate.out_dir={work / 'report_refit'}"])
        refit_ctx, _ = _train_both(refit_cfg)
        refit_table, _ = run_evaluation(refit_cfg, refit_ctx, baselines=[], cold_start=cold)
        refit_table["system"] = refit_table["system"] + REFIT
        refit_table["seed"] = seeds[0]
        table = pd.concat([table, refit_table], ignore_index=True)
    return {"dataset": name, "seconds": time.perf_counter() - t0, "users": info["users"],
            "cold_users": info["cold_users"], "notes": info["notes"], "seeds": seeds, "boosts": boosts,
            "baselines": tunings, "validation": validation, "cold_start": info["cold_start"],
            "ratio_interval_90": intervals,
            "rows": table.to_dict(orient="records")}


SEGMENTS = {"all": "", "warm": " (with history)", "cold": " (no history)"}


def _column(metric: str, segment: str) -> str:
    return metric + SEGMENTS[segment]


def run_record() -> dict:
    """When, on what code and which machine the run was made: every quoted number traces back to it."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **git_state(),
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}}


def _is_ours(system: str) -> bool:
    return system in OURS or system.endswith(REFIT)


def _best_baseline(rows: list[dict], metric: str) -> tuple[str, float]:
    ran = [r for r in rows if not _is_ours(r["system"]) and np.isfinite(r.get(metric, float("nan")))]
    best = max(ran, key=lambda r: r[metric])
    return best["system"], float(best[metric])


def print_dataset(result: dict) -> dict:
    rows, seeds = result["rows"], result["seeds"]
    table = Table(title=f"{result['dataset']}: test split, {result['users']:,} users ({result['cold_users']:,} cold), "
                  "full ranking; baselines tuned on validation")
    cols = [(seg, m) for seg in SEGMENTS for m in METRICS] + [("all", c) for c in ("recall@50", "ndcg@10", "mrr",
                                                                                     "coverage@20")]
    table.add_column("system")
    for seg, m in cols:
        table.add_column(f"{m} {seg}", justify="right")
    for r in rows:
        label = r["system"] + (f" (seed {int(r['seed'])})" if len(seeds) > 1 and _is_ours(r["system"]) else "")
        if isinstance(r.get("not_run"), str):
            table.add_row(label, f"not run: {r['not_run']}", *[""] * (len(cols) - 1))
            continue
        table.add_row(label, *(f"{r.get(_column(m, seg), float('nan')):.4f}" for seg, m in cols))
    console.print(table)
    chosen = Table(title="baselines: settings chosen on validation (NDCG@20 of users with history)")
    for column in ("baseline", "trials", "valid ndcg@20", "chosen settings"):
        chosen.add_column(column)
    for t in result["baselines"].values():
        chosen.add_row(_system_name(t), str(t["trials"]), f"{t['valid_ndcg']:.4f}",
                       f"not run: {t['not_run']}" if t["not_run"] else _short(t["params"]))
    console.print(chosen)
    if "validation" in result:
        print_validation(result)
    summary = {}
    for segment in ("warm", "all"):
        for metric in METRICS:
            column = _column(metric, segment)
            per_seed = [float(r[column]) for r in rows if r["system"] == HEADLINE]
            ours = float(np.mean(per_seed))
            base_name, base = _best_baseline(rows, column)
            ratios = [v / base if base else float("inf") for v in per_seed]
            lo, hi = result["ratio_interval_90"][f"{metric} {segment}"]
            summary[f"{metric} {segment}"] = {"ours": HEADLINE, "ours_value": ours, "best_baseline": base_name,
                                              "baseline_value": base, "ratio": ours / base if base else float("inf"),
                                              "ours_per_seed": per_seed, "ratio_per_seed": ratios,
                                              "ratio_interval_90": [lo, hi]}
            spread = (f"; mean of {len(seeds)} training seeds, per seed "
                      f"{', '.join(f'{x:.2f}×' for x in ratios)}" if len(seeds) > 1 else "")
            console.print(f"  {metric} {segment}{' (headline)' if segment == 'warm' else ''}: {HEADLINE} {ours:.4f} "
                          f"vs best baseline {base_name} {base:.4f} → {summary[f'{metric} {segment}']['ratio']:.2f}× "
                          f"(90% interval over test users {lo:.2f}–{hi:.2f}{spread})")
    return summary


def print_validation(result: dict) -> None:
    scores = result["validation"]
    table = Table(title=f"{result['dataset']}: validation NDCG@20, users with history (where settings are chosen)")
    table.add_column("system")
    table.add_column("valid ndcg@20", justify="right")
    for system, value in sorted(scores.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1.0)):
        table.add_row(system, f"{value:.4f}")
    console.print(table)
    ahead = [s for s, v in scores.items() if not _is_ours(s) and v > scores.get(HEADLINE, float("inf"))]
    console.print(f"  peers ahead of {HEADLINE} on validation: {', '.join(ahead) or 'none'}")


def _system_name(tuning: dict) -> str:
    from rayrec.tune.baselines import make_baseline

    return make_baseline(tuning["name"]).name


def _short(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "defaults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="one epoch per model: a smoke check, not a result")
    parser.add_argument("--seeds", default="0", help="training seeds (train.seed), comma-separated: each trains and "
                        "scores both models again; the ratio is quoted for their mean, with each seed's beside it")
    parser.add_argument("--refit", action="store_true", help="also refit both models on train + valid "
                        "(train.include_valid, the boost chosen on validation) and score them: rows '(train+valid)'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every dataset, e.g. evaluate.baseline_trials=32")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json", help="results JSON (the run of record "
                        "is committed as benchmarks/results/quality.json)")
    parser.add_argument("--validation-only", action="store_true", help="add the validation scores to the finished "
                        "run in --out (its run folders must still be there), training and scoring nothing else")
    args = parser.parse_args()
    init_ray()
    if args.validation_only:
        add_validation(args.out, args.overrides)
        return
    results = []
    for name in args.datasets.split(","):
        console.rule(name)
        result = run_dataset(name, args.quick, args.refit, [int(x) for x in args.seeds.split(",")], args.overrides)
        result["summary"] = print_dataset(result)
        results.append(result)
        # Written after every dataset, so a long run that is cut short keeps what it finished.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**run_record(), "quick": args.quick, "refit": args.refit,
                                        "seeds": args.seeds, "overrides": args.overrides, "results": results},
                                       indent=2, default=_json_value))
        console.print(f"wrote {args.out}")


def _json_value(value: object) -> object:
    if value is pd.NA:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return float(value)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
