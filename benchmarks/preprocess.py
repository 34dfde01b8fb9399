"""Preprocessing benchmark: the Ray Data pipeline (`run_preprocess`) against a one-process pandas baseline.

Owns the measurement: for each dataset (synthetic ``large``, MovieLens 100K, Online Retail) it runs
each engine in a fresh subprocess (so every peak is that run's own), times the preprocessing call
wall-clock (Ray start-up reported apart), takes peak memory (the child's ``ru_maxrss`` for the pandas
process and the Ray driver; psutil sampling, from this process, of the Ray worker and system processes
under the driver), checks that both engines wrote the same data (every manifest count, and a content
digest of every output table and vocabulary, ``rayrec.data.manifest_check.output_digests``: the rows
as a multiset, so row order and file layout do not count) and exits non-zero when anything differs,
and sweeps synthetic scales to show that the Ray driver's memory stays flat as the log grows. Prints
rich tables and writes ``benchmarks/results/preprocess.json``.

    .venv/bin/python benchmarks/preprocess.py [--quick] [--datasets ...] [--scales ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from child_runs import finish_child
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = RESULTS / "data"
SCALES = ("small", "demo", "large")
REAL = {"movielens-100k": "configs/movielens-100k.yaml", "online-retail": "configs/online-retail.yaml"}
DATASETS = (*(f"synthetic-{s}" for s in SCALES), *REAL)
COMPARED = ("counts", "outputs", "vocab_sizes", "split_cutoffs_ms", "catalog")  # manifest keys both engines write
STAGES = ("checking input files", "reading and validating the catalog", "reading and validating",
          "removing exact duplicates", "k-core", "building vocabularies", "building sequences", "writing the item table",
          "checking the manifest")
MB = 2**20
console = Console(width=None if sys.stdout.isatty() else 200)


def config_for(dataset: str, out: Path) -> Any:
    from rayrec.config import load_config

    if dataset in REAL:
        return load_config(REPO / REAL[dataset], [f"preprocess.out_dir={out}"])
    raw = DATA / dataset.removeprefix("synthetic-")
    return load_config(REPO / "configs" / "demo.yaml", [
        f"source.events={raw / 'events'}", f"source.catalog={raw / 'catalog.csv'}", f"preprocess.out_dir={out}",
    ])  # fmt: skip


def ensure_synthetic(scale: str) -> None:
    """Generate a synthetic log under benchmarks/results/data (gitignored) unless it is there."""
    from rayrec.data.synthetic import generate

    if not (DATA / scale / "bad_rows.json").exists():
        with console.status(f"generating synthetic {scale} log"):
            summary = generate(DATA / scale, scale=scale, seed=7)
        console.log(f"generated synthetic {scale}: {summary.n_events:,} events in {summary.n_event_files} file(s)")


# ---- child side: one engine on one dataset in a fresh process -------------------------------


class RssSampler(threading.Thread):
    """Peak RSS of this process, sampled every 20 ms, reset with ``mark``."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def mark(self) -> int:
        """The peak since the last mark; the next peak starts from the current RSS."""
        peak, self.peak = self.peak, self.proc.memory_info().rss
        return max(peak, self.peak)


def child(engine: str, dataset: str, result_path: Path, num_cpus: int) -> None:
    os.chdir(REPO)  # the real-dataset configs name ../shared/datasets relative to the checkout
    cfg = config_for(dataset, RESULTS / "out" / f"{dataset}-{engine}")
    sampler = RssSampler()
    sampler.start()
    stages: list[tuple[float, str, float]] = []  # (start s, label, driver peak MB of the stage before)
    init_s = 0.0
    if engine == "ray":
        import ray

        from rayrec.config import RayConfig
        from rayrec.data.preprocess import run_preprocess as run
        from rayrec.runtime import init_ray

        t = time.perf_counter()
        init_ray(RayConfig(num_cpus=num_cpus))
        init_s = time.perf_counter() - t
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from pandas_preprocess import run_pandas_preprocess as run
    sampler.mark()
    before, cpu0 = sampler.mark(), _cpu_self()
    t0 = time.perf_counter()
    result = run(cfg, lambda label: stages.append((time.perf_counter() - t0, label, sampler.mark() / MB)))
    seconds = time.perf_counter() - t0
    cpu_s = _cpu_self() - cpu0
    sampler.stop.set()
    stages.append((seconds, "end", sampler.mark() / MB))
    if engine == "ray":
        ray.shutdown()
    keep = COMPARED
    result_path.write_text(json.dumps({
        "engine": engine, "dataset": dataset, "seconds": seconds, "init_s": init_s, "cpu_s": cpu_s,
        **stage_summary(stages), "stage_log": stages, "rss_before_run_mb": before / MB,
        "rss_peak_run_mb": max(peak for _, _, peak in stages[1:]),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
        **{k: result[k] for k in keep},
    }, indent=1))  # fmt: skip


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_summary(stages: list[tuple[float, str, float]]) -> dict[str, dict[str, float]]:
    """Seconds and driver peak MB per canonical stage; an on_stage call ends the stage before it."""
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for (start, label, _), (end, _, peak) in zip(stages, stages[1:]):
        name = next((s for s in STAGES if label.startswith(s)), label)  # k-core rounds fold in
        seconds[name] = seconds.get(name, 0.0) + end - start
        peaks[name] = max(peaks.get(name, 0.0), peak)
    return {"stages": seconds, "stage_peak_mb": peaks}


# ---- parent side ------------------------------------------------------------------------------


def _tree_memory(root: psutil.Process, cpu: dict[int, float]) -> dict[str, float]:
    """RSS/PSS of the root's descendants (``ray::`` workers; raylet, GCS, agents), and their CPU s in ``cpu``."""
    mem = {"workers_rss": 0.0, "workers_pss": 0.0, "system_rss": 0.0}
    for p in root.children(recursive=True):
        try:
            times = p.cpu_times()
            cpu[p.pid] = times.user + times.system
            info = p.memory_full_info()
            worker = (p.cmdline() or [""])[0].startswith("ray::")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if worker:
            mem["workers_rss"] += info.rss / MB
            mem["workers_pss"] += getattr(info, "pss", info.rss) / MB
        else:
            mem["system_rss"] += info.rss / MB
    return mem


def measure(engine: str, dataset: str, num_cpus: int, keep_outputs: bool, progress: Progress) -> dict[str, Any]:
    result_path = RESULTS / "runs" / f"{dataset}-{engine}.json"
    log_path = RESULTS / "logs" / f"{dataset}-{engine}.log"
    for path in (result_path, log_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, dataset, str(result_path),
           "--num-cpus", str(num_cpus)]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    task = progress.add_task(f"{engine:6} {dataset}", total=None)
    peaks = {"workers_rss": 0.0, "workers_pss": 0.0, "system_rss": 0.0}
    cpu: dict[int, float] = {}  # descendant pid -> its latest CPU seconds
    load = os.getloadavg()[0]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            if engine == "ray":
                mem = _tree_memory(root, cpu)
                peaks = {k: max(v, mem[k]) for k, v in peaks.items()}
                progress.update(task, description=f"{engine:6} {dataset}  (workers now {mem['workers_rss']:,.0f} MB RSS)")
            time.sleep(0.25)
    progress.remove_task(task)
    result = finish_child(proc, cpu, result_path, log_path, f"{engine} on {dataset}", console)
    from rayrec.data.manifest_check import output_digests  # not at import: the child's memory is measured

    out = RESULTS / "out" / f"{dataset}-{engine}"
    result["digests"] = output_digests(out)  # here, not in the child: hashing is not the engine's time
    if not keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    result["load_avg_1m"] = [load, os.getloadavg()[0]]
    if engine == "ray":
        result |= {f"{k}_peak_mb": v for k, v in peaks.items()}
        result |= {"cpu_s_driver": result["cpu_s"], "cpu_s": result["cpu_s"] + sum(cpu.values())}
    console.log(f"{engine:6} {dataset}: {result['counts']['rows_read']:,} rows in {result['seconds']:.1f} s, "
                f"{result['cpu_s']:.1f} CPU s, peak RSS {result['ru_maxrss_mb']:,.0f} MB, load {load:.1f}→{os.getloadavg()[0]:.1f}")
    return result


def compare(ray: dict[str, Any], pd_: dict[str, Any]) -> list[str]:
    """What differs between the engines (any difference exits 1): manifest counts by name, then
    output tables and vocabularies by digest."""
    counts = [f"counts.{k}" for k in sorted(set(ray["counts"]) | set(pd_["counts"]))
              if ray["counts"].get(k) != pd_["counts"].get(k)]
    keys = [k for k in COMPARED if k != "counts" and ray[k] != pd_[k]]
    tables = [k for k in sorted(set(ray["digests"]) | set(pd_["digests"])) if ray["digests"].get(k) != pd_["digests"].get(k)]
    return [*counts, *keys, *tables]


def tables(results: dict[str, dict[str, Any]], datasets: list[str], scales: list[str]) -> None:
    main = Table(title="preprocess: Ray Data pipeline vs one pandas process (wall-clock, 2 CPUs)")
    for col in ("dataset", "events", "Ray s", "pandas s", "Ray rows/s", "pandas rows/s", "ratio",
                "Ray driver peak MB", "Ray workers peak MB", "pandas peak MB", "outputs equal"):
        main.add_column(col, justify="left" if col == "dataset" else "right")
    for d in datasets:
        r, p, m = results[d]["ray"], results[d]["pandas"], results[d]["mismatch"]
        n = r["counts"]["rows_read"]
        ok = "✓" if not m else f"✗ {', '.join(m)}"
        main.add_row(d, f"{n:,}", f"{r['seconds']:.1f}", f"{p['seconds']:.1f}", f"{n / r['seconds']:,.0f}",
                     f"{n / p['seconds']:,.0f}", f"{p['seconds'] / r['seconds']:.2f}×", f"{r['ru_maxrss_mb']:,.0f}",
                     f"{r['workers_rss_peak_mb']:,.0f}", f"{p['ru_maxrss_mb']:,.0f}", ok)  # fmt: skip
    console.print(main)
    console.print("ratio = Ray throughput / pandas throughput (> 1: Ray faster). Ray s excludes ray.init; "
                  "workers = summed RSS of ray:: processes (shared object-store pages counted per process).")
    flat = Table(title="Ray driver memory as the synthetic log grows")
    for col in ("scale", "events", "Ray s", "driver RSS before run MB", "driver peak MB",
                "workers peak RSS / PSS MB", "pandas peak MB"):
        flat.add_column(col, justify="right")
    for s in scales:
        r, p = results[f"synthetic-{s}"]["ray"], results[f"synthetic-{s}"]["pandas"]
        flat.add_row(s, f"{r['counts']['rows_read']:,}", f"{r['seconds']:.1f}", f"{r['rss_before_run_mb']:,.0f}",
                     f"{r['ru_maxrss_mb']:,.0f}", f"{r['workers_rss_peak_mb']:,.0f} / {r['workers_pss_peak_mb']:,.0f}",
                     f"{p['ru_maxrss_mb']:,.0f}")  # fmt: skip
    console.print(flat)
    stages = Table(title="seconds per stage (Ray / pandas)")
    stages.add_column("stage")
    shown = list(dict.fromkeys([*datasets, *(f"synthetic-{s}" for s in scales)]))
    for d in shown:
        stages.add_column(d, justify="right")
    for s in STAGES:
        cells = [f"{results[d]['ray']['stages'].get(s, 0):.1f} / {results[d]['pandas']['stages'].get(s, 0):.1f}"
                 for d in shown]
        stages.add_row(s, *cells)
    for label, key in (("total wall s", "seconds"), ("CPU s, all processes", "cpu_s"), ("ray.init s (not in Ray s)", "init_s")):
        stages.add_row(label, *(f"{results[d]['ray'][key]:.1f} / {results[d]['pandas'][key]:.1f}" for d in shown))
    stages.add_row("driver peak MB (Ray) / peak MB (pandas)",
                   *(f"{results[d]['ray']['ru_maxrss_mb']:,.0f} / {results[d]['pandas']['ru_maxrss_mb']:,.0f}" for d in shown))
    console.print(stages)
    drv = Table(title="Ray driver peak RSS MB per stage (before run → stages)")
    drv.add_column("stage")
    for d in shown:
        drv.add_column(d, justify="right")
    drv.add_row("before run", *(f"{results[d]['ray']['rss_before_run_mb']:,.0f}" for d in shown))
    for s in STAGES:
        drv.add_row(s, *(f"{results[d]['ray']['stage_peak_mb'].get(s, 0):,.0f}" for d in shown))
    console.print(drv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS,
                        default=["synthetic-large", "movielens-100k", "online-retail"])
    parser.add_argument("--scales", nargs="+", choices=SCALES, default=list(SCALES),
                        help="synthetic scales for the driver-memory sweep")
    parser.add_argument("--quick", action="store_true", help="synthetic small only (a smoke check)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--keep-outputs", action="store_true", help="keep benchmarks/results/out/")
    parser.add_argument("--json", type=Path, default=RESULTS / "preprocess.json")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "DATASET", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], Path(args.child[2]), args.num_cpus)
    if args.quick:
        args.datasets, args.scales = ["synthetic-small"], ["small"]
    scales = sorted(set(args.scales), key=SCALES.index)
    runs = list(dict.fromkeys([*(f"synthetic-{s}" for s in scales), *args.datasets]))
    for d in runs:
        if d.startswith("synthetic-"):
            ensure_synthetic(d.removeprefix("synthetic-"))
    results: dict[str, dict[str, Any]] = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        overall = progress.add_task("runs", total=2 * len(runs))
        for d in runs:
            ray_result = measure("ray", d, args.num_cpus, args.keep_outputs, progress)
            progress.advance(overall)
            pandas_result = measure("pandas", d, args.num_cpus, args.keep_outputs, progress)
            progress.advance(overall)
            results[d] = {"ray": ray_result, "pandas": pandas_result, "mismatch": compare(ray_result, pandas_result)}
    tables(results, args.datasets, scales)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
        "ray": version("ray"), "pandas": version("pandas"), "cpu_count": os.cpu_count(), "num_cpus": args.num_cpus,
        "memory_total_mb": psutil.virtual_memory().total / MB, "datasets": args.datasets, "scales": scales,
        "results": results,
    }, indent=1))  # fmt: skip
    console.print(f"wrote {args.json}")
    bad = {d: r["mismatch"] for d, r in results.items() if r["mismatch"]}
    if bad:
        raise SystemExit(f"outputs differ between Ray and pandas: {bad}")


if __name__ == "__main__":
    main()
