"""Training-throughput benchmark: the two-tower retrieval loop alone, and under Ray Train with 1 and 2 workers.

Owns the measurement: on the demo synthetic set (generated and preprocessed once under
``benchmarks/results/train_throughput/``), each case runs in a fresh subprocess on a local Ray of 2 CPUs:
the plain loop (``single_process_io`` + ``train_retrieval``, torch threads 2 and 1, Ray shut down
before the loop), Ray Train with 1 worker (threads 2 and 1) and Ray Train with 2 DDP workers (1 thread
each). It reports the fit's wall time, the per-epoch time and samples/s measured by the loop itself, and
the overhead (fit wall time minus the epochs: Ray Train start-up, validation + checkpoint per epoch,
shut-down, bundle/plot), split into the part before the first epoch report and after the last. Prints a
rich table and writes ``benchmarks/results/train_throughput.json`` with the 1-minute load average and
the CPU seconds of other processes during each case (the machine is shared).

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--epochs N] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = RESULTS / "train_throughput"
RAW, PROCESSED = WORK / "raw", WORK / "processed"
# name -> (runner, workers, torch threads per process)
CASES: dict[str, tuple[str, int, int]] = {
    "plain 2 threads": ("plain", 1, 2), "plain 1 thread": ("plain", 1, 1),
    "Ray Train 1×2 threads": ("ray", 1, 2), "Ray Train 1×1 thread": ("ray", 1, 1),
    "Ray Train 2×1 thread (DDP)": ("ray", 2, 1),
}  # fmt: skip
BASELINE = "plain 2 threads"
console = Console(width=None if sys.stdout.isatty() else 200)


def ensure_data() -> None:
    """The demo synthetic set, generated and preprocessed with the CLI into WORK (not data/demo)."""
    if (PROCESSED / "manifest.json").exists():
        return
    cli, demo = str(REPO / ".venv" / "bin" / "rayrec"), str(REPO / "configs" / "demo.yaml")
    with console.status("generating and preprocessing the demo synthetic set"):
        for cmd in ([cli, "generate", "-c", demo, "--set", f"generate.out_dir={RAW}"],
                    [cli, "preprocess", "-c", demo, "--set", f"source.events={RAW / 'events'}", "--set",
                     f"source.catalog={RAW / 'catalog.csv'}", "--set", f"preprocess.out_dir={PROCESSED}",
                     "--set", "ray.num_cpus=2"]):  # fmt: skip
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)


# ---- child side: one case in a fresh process ---------------------------------------------------


def child(case: str, epochs: int, result_path: Path) -> None:
    from rayrec.config import load_config
    from rayrec.runtime import init_ray, set_threads

    runner, workers, threads = CASES[case]
    if runner == "plain":
        set_threads(threads)
    slug = "".join(c if c.isalnum() else "-" for c in case)
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"preprocess.out_dir={PROCESSED}", f"train.out_dir={WORK / 'runs' / slug}", f"train.epochs={epochs}",
        "train.eval_users=1", f"train.num_workers={workers}", f"train.threads_per_worker={threads}",
        "train.resources_per_worker={CPU: 1}", "ray.num_cpus=2",
    ])  # fmt: skip
    import ray

    from rayrec.train.loop import train_retrieval
    from rayrec.train.trainer import load_context, run_training, single_process_io, training_dataset

    t = time.perf_counter()
    init_ray(cfg.ray)
    ctx = load_context(cfg)
    dataset = training_dataset(cfg, "two_tower", ctx.manifest["history_length"])
    reports: list[float] = []  # perf_counter when each epoch's report (checkpoint) appeared
    if runner == "plain":
        io = single_process_io(dataset, cfg.train.batch_size, cfg.train.seed)
        rows = sum(len(b["item_idx"]) for b in io.batches(0))  # rows an epoch sees (drop_last)
        ray.shutdown()  # the plain loop runs without Ray
        report = io.report
        io.report = lambda m, folder: (reports.append(time.perf_counter()), report(m, folder))[1]
        setup_s, load0, t0 = time.perf_counter() - t, os.getloadavg()[0], time.perf_counter()
        train_retrieval(ctx, io)
        metrics: list[dict[str, float]] = io.reports  # type: ignore[attr-defined]
    else:
        n = dataset.count()  # outside the timing: rows per worker give the loop's epoch time
        rows = (n // workers) // cfg.train.batch_size * cfg.train.batch_size
        watcher = CheckpointWatcher(WORK / "runs" / slug / "ray" / f"{cfg.name}-two_tower", reports)
        setup_s, load0, t0 = time.perf_counter() - t, os.getloadavg()[0], time.perf_counter()
        watcher.start()
        metrics = run_training(cfg, "two_tower", ctx).metrics
        watcher.stop.set()
    fit_s, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    if ray.is_initialized():
        ray.shutdown()
    epoch_s = [rows / m["samples_per_s"] for m in metrics]  # = the loop's own timer (seen / rate)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result_path.write_text(json.dumps({
        "case": case, "runner": runner, "workers": workers, "threads": threads, "epochs": len(metrics),
        "setup_s": setup_s, "fit_s": fit_s, "epoch_s": epoch_s, "rank0_rows_per_epoch": rows,
        "rank0_samples_per_s": [m["samples_per_s"] for m in metrics], "loss": [m["loss"] for m in metrics],
        "startup_s": reports[0] - t0 - epoch_s[0] if reports else None,
        "tail_s": t0 + fit_s - reports[-1] if reports else None,
        "between_epochs_s": [b - a - e for a, b, e in zip(reports, reports[1:], epoch_s[1:])],
        "load_avg_1m_fit": [load0, load1], "cpu_s_driver": usage.ru_utime + usage.ru_stime,
    }, indent=1))  # fmt: skip


class CheckpointWatcher(threading.Thread):
    """Records when each epoch's checkpoint folder appears in Ray Train's storage (every 50 ms)."""

    def __init__(self, folder: Path, seen_at: list[float]) -> None:
        super().__init__(daemon=True)
        self.folder, self.seen_at, self.names, self.stop = folder, seen_at, set[str](), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for p in self.folder.glob("checkpoint_*") if self.folder.exists() else ():
                if p.name not in self.names:
                    self.names.add(p.name)
                    self.seen_at.append(time.perf_counter())


# ---- parent side -------------------------------------------------------------------------------


def _busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def measure(case: str, epochs: int) -> dict[str, Any]:
    result_path, log_path = WORK / "cases" / f"{case}.json", WORK / "logs" / f"{case}.log"
    for path in (result_path, log_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, str(epochs), str(result_path)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    load, busy0, wall0 = os.getloadavg()[0], _busy_s(), time.perf_counter()
    cpu: dict[int, float] = {}  # descendant pid -> its latest CPU seconds (Ray's processes)
    with console.status(f"{case} ({epochs} epochs)"), log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            for p in root.children(recursive=True):
                try:
                    cpu[p.pid] = sum(p.cpu_times()[:4])
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            time.sleep(0.25)
    wall, busy = time.perf_counter() - wall0, _busy_s() - busy0
    r = finish_child(proc, cpu, result_path, log_path, case, console)
    ours = r["cpu_s_driver"] + sum(cpu.values())
    r |= {"load_avg_1m": [load, os.getloadavg()[0]], "process_wall_s": wall, "cpu_s_ours": ours,
          "cpu_s_others": max(busy - ours, 0.0), "others_cpu_share": max(busy - ours, 0.0) / (wall * psutil.cpu_count())}
    steady = r["rank0_samples_per_s"][1:] or r["rank0_samples_per_s"]  # epoch 0 is warm-up when there are more
    r["steady_samples_per_s"] = r["workers"] * sum(steady) / len(steady)  # rank 0's rate × world size
    r["overhead_s"] = r["fit_s"] - sum(r["epoch_s"])
    console.log(f"{case}: {r['steady_samples_per_s']:,.0f} samples/s, fit {r['fit_s']:.1f} s, overhead "
                f"{r['overhead_s']:.1f} s, load {load:.2f}→{os.getloadavg()[0]:.2f}, others {r['others_cpu_share']:.0%} CPU")
    return r


def table(results: dict[str, dict[str, Any]]) -> None:
    base = results.get(BASELINE, {}).get("steady_samples_per_s")
    t = Table(title="two-tower training throughput, demo synthetic set (2 CPUs, batch 512 per worker)")
    for col in ("case", "epochs", "setup s", "fit wall s", "Σ epoch s", "overhead s", "start-up s", "tail s",
                "epoch-0 samples/s", "steady samples/s", f"vs {BASELINE}", "load 1m before→after", "others' CPU"):
        t.add_column(col, justify="left" if col == "case" else "right")
    for case, r in results.items():
        t.add_row(case, str(r["epochs"]), f"{r['setup_s']:.1f}", f"{r['fit_s']:.1f}", f"{sum(r['epoch_s']):.1f}",
                  f"{r['overhead_s']:.1f}", f"{r['startup_s']:.1f}", f"{r['tail_s']:.1f}",
                  f"{r['workers'] * r['rank0_samples_per_s'][0]:,.0f}", f"{r['steady_samples_per_s']:,.0f}",
                  f"{r['steady_samples_per_s'] / base:.2f}×" if base else "-",
                  "{:.2f}→{:.2f}".format(*r["load_avg_1m"]), f"{r['others_cpu_share']:.0%}")  # fmt: skip
    console.print(t)
    console.print(
        "samples/s: the loop's own per-epoch rate (epoch time includes waiting for data; validation and "
        "checkpointing are outside it). 2 workers: rank 0 reports its own rate only, so the global rate is "
        "rank 0's × world size (equal shards), with a global batch of 2×512. steady = mean of epochs after "
        "the first (the only epoch with --quick). setup = ray.init + context (+ materialising the data for "
        "the plain loop, whose Ray is shut down before training); overhead = fit wall − Σ epoch s, of which "
        "start-up = before the first epoch's report minus that epoch, tail = after the last report (shut-down, "
        "bundle copy, plot); the rest is validation (eval_users=1) + checkpoint between epochs. Ray Train "
        "epochs also run the Ray Data pipeline (read + _retrieval_rows) on the same 2 cores. others' CPU = "
        "busy CPU of processes not ours / (wall × cores) over the whole case.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 epoch per case (a smoke check)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", type=Path, default=RESULTS / "train_throughput.json")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "EPOCHS", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), Path(args.child[2]))
    epochs = 1 if args.quick else args.epochs
    ensure_data()
    results = {case: measure(case, epochs) for case in args.cases}
    table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ray": version("ray"), "torch": version("torch"),
        "cpu_count": os.cpu_count(), "ray_num_cpus": 2, "epochs": epochs, "eval_users": 1, "batch_size_per_worker": 512,
        "data": str(PROCESSED.relative_to(REPO)), "results": results,
    }, indent=1))  # fmt: skip
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
