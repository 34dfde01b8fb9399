"""Running a load test: the Locust command line, the Locust subprocess, replica polling, and the report
(JSON + PNG) computed from every recorded request.

Two modes:

- fixed rate (``rate``): paced users, each on its own fixed timetable and staggered across the period
  (see the locustfile), hold the rate, so the load is open-loop only while a free user is there to send
  the next request: with ``max_concurrency`` users the
  generator stops being open-loop once rate × latency reaches that cap. When the achieved rate of 200
  answers falls below 95% of the target the report flags saturation and says which limit was hit.
- fixed concurrency (``users``): that many users, each sending its next request as soon as the last one
  was answered (closed loop).

Locust monkey-patches the interpreter with gevent, so it always runs in its own process
(``python -m locust``); nothing here imports it. Ray is imported only to poll replica counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from rayrec.loadtest.contract import (
    CONNECTION_ERROR,
    ENV_RECORDS_DIR,
    ENV_USER_RPS,
    RECORDS_GLOB,
    STOPPED_GLOB,
    RequestMix,
    RequestRecord,
)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SATURATION_SHARE = 0.95
# Seconds a user may take to finish its in-flight request when the run ends: those answers are recorded too.
STOP_TIMEOUT_S = 10
# Locust's run-time clock can start up to about a second before the first request; the extra second keeps
# it from cutting the measured window short (which ends `duration_s` after the warm-up regardless).
RUN_TIME_SLACK_S = 1
# Locust's own start-up (imports, gevent) and shutdown on top of the run time before the run counts as hung.
STARTUP_GRACE_S = 60.0
OK = 200

TickCallback = Callable[[float, float], None]  # (seconds elapsed, seconds planned)
ReplicaReader = Callable[[], dict[str, int]]  # deployment name → RUNNING replicas


class LoadtestError(RuntimeError):
    """Something the user can fix: a URL that does not answer, bad settings, Locust missing or failing."""


@dataclass(frozen=True)
class LoadtestSettings:
    """One load test: the target, the load shape and what to send. Exactly one of ``rate``/``users``."""

    url: str  # base URL including the route prefix, e.g. http://127.0.0.1:8000
    rate: float | None = None  # requests/s, open loop
    users: int | None = None  # fixed concurrency, closed loop
    max_concurrency: int = 64  # simulated users that hold ``rate``
    warmup_s: int = 10
    duration_s: int = 60
    mix: RequestMix = field(default_factory=RequestMix)
    replicas_every_s: float = 2.0
    app_name: str = "rayrec"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        problems = [message for failed, message in [
            ((self.rate is None) == (self.users is None), "give exactly one of --rate (requests/s) or --users"),
            (self.rate is not None and self.rate <= 0, "--rate must be > 0"),
            (self.users is not None and self.users < 1, "--users must be >= 1"),
            (self.max_concurrency < 1, "--max-concurrency must be >= 1"),
            (self.warmup_s < 0, "--warmup must be >= 0"),
            (self.duration_s < 1, "--duration must be >= 1 s"),
            (self.replicas_every_s <= 0, "--replicas-every must be > 0"),
            (self.mix.k < 1, "--k must be >= 1"),
            (self.mix.users_pool < 1, "--users-pool must be >= 1"),
            (not 0 <= self.mix.unknown_fraction <= 1, "--unknown-fraction must be within 0..1"),
            (not 0 <= self.mix.similar_fraction <= 1, "--similar-fraction must be within 0..1"),
            (self.mix.similar_fraction > 0 and self.mix.items_file is None,
             "--similar-fraction needs --items-file (item ids, one per line)"),
            (self.mix.items_file is not None and not Path(self.mix.items_file).is_file(),
             f"--items-file {self.mix.items_file} does not exist"),
            (not 0 <= self.mix.search_fraction <= 1, "--search-fraction must be within 0..1"),
            (self.mix.search_fraction + self.mix.similar_fraction > 1,
             "--search-fraction plus --similar-fraction must be at most 1"),
            (self.mix.search_fraction > 0 and self.mix.queries_file is None,
             "--search-fraction needs --queries-file (search queries, one per line)"),
            (self.mix.queries_file is not None and not Path(self.mix.queries_file).is_file(),
             f"--queries-file {self.mix.queries_file} does not exist"),
            (not self.url.startswith(("http://", "https://")), f"--url must start with http:// or https://, "
                                                               f"not {self.url!r}"),
        ] if failed]
        if problems:
            raise LoadtestError("; ".join(problems))

    @property
    def mode(self) -> Literal["rate", "users"]:
        return "rate" if self.rate is not None else "users"

    @property
    def simulated_users(self) -> int:
        return self.max_concurrency if self.rate is not None else int(self.users or 0)

    @property
    def spawn_rate(self) -> float:
        # Everyone starts within the first second; paced users then stagger their first requests
        # themselves (see locustfile), which Locust's batched spawning cannot do.
        return float(self.simulated_users)

    @property
    def run_time_s(self) -> int:
        return self.warmup_s + self.duration_s + RUN_TIME_SLACK_S

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


def locust_command(settings: LoadtestSettings, python: str = sys.executable) -> list[str]:
    return [python, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", settings.base_url,
            "-u", str(settings.simulated_users), "-r", f"{settings.spawn_rate:g}",
            "--run-time", f"{settings.run_time_s}s", "--stop-timeout", str(STOP_TIMEOUT_S), "--only-summary",
            # Failed requests are data here, not a failed run: a non-zero exit then means Locust broke.
            "--exit-code-on-error", "0"]


def locust_env(settings: LoadtestSettings, records_dir: Path, base_env: dict[str, str] | None = None
               ) -> dict[str, str]:
    env = dict(os.environ if base_env is None else base_env)
    env.update(settings.mix.to_env())
    env[ENV_RECORDS_DIR] = str(records_dir.resolve())
    env.pop(ENV_USER_RPS, None)
    if settings.rate is not None:
        env[ENV_USER_RPS] = repr(settings.rate / settings.simulated_users)
    # The locustfile imports rayrec.loadtest.contract: find it even when rayrec is not installed.
    source_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return env


def locust_version() -> str:
    try:
        return metadata.version("locust")
    except metadata.PackageNotFoundError:
        raise LoadtestError("Locust is not installed: pip install 'locust>=2.30'") from None


def check_reachable(base_url: str, timeout_s: float = 5.0) -> None:
    """Fail before the run when ``{base_url}/healthz`` does not answer 200."""
    url = f"{base_url.rstrip('/')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, ValueError) as e:
        raise LoadtestError(f"{url} does not answer ({getattr(e, 'reason', e)}); is serving running and is --url right "
                            "(including the route prefix)?") from None
    if status != OK:
        raise LoadtestError(f"{url} answered {status}, not 200; serving is not healthy")


def run_locust(settings: LoadtestSettings, out_dir: Path, on_tick: TickCallback | None = None) -> list[str]:
    """Run Locust to the end; records land in ``out_dir/records/``, its output in ``out_dir/locust.log``.
    Returns the command line."""
    command = locust_command(settings)
    records_dir = out_dir / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "locust.log"
    started = time.monotonic()
    deadline = started + settings.run_time_s + STOP_TIMEOUT_S + STARTUP_GRACE_S
    # cwd=out_dir: Locust reads locust.conf / pyproject.toml from the working directory; none of ours apply.
    with log_path.open("w") as log, subprocess.Popen(command, env=locust_env(settings, records_dir), cwd=out_dir,
                                                     stdout=log, stderr=subprocess.STDOUT) as process:
        try:
            while process.poll() is None:
                if on_tick is not None:
                    on_tick(time.monotonic() - started, float(settings.run_time_s))
                if time.monotonic() > deadline:
                    raise LoadtestError(f"Locust did not finish within {deadline - started:.0f} s; see {log_path}")
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise LoadtestError(f"Locust exited with {process.returncode}; {log_path} ends with:\n{tail}")
    return command


def read_stopped_at(records_dir: Path) -> float | None:
    """When Locust began stopping (the earliest process), or None when it never said so."""
    return min((float(path.read_text()) for path in records_dir.glob(STOPPED_GLOB)), default=None)


def read_records(records_dir: Path) -> list[RequestRecord]:
    records = [RequestRecord.from_json(line)
               for path in sorted(records_dir.glob(RECORDS_GLOB))
               for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r.start)


class ReplicaPoller:
    """Reads replica counts every ``every_s`` seconds in a background thread until stopped."""

    def __init__(self, read: ReplicaReader, every_s: float) -> None:
        self.read = read
        self.every_s = every_s
        self.samples: list[tuple[float, dict[str, int]]] = []  # (epoch seconds, counts)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="replica-poller", daemon=True)

    def _poll(self) -> None:
        while True:
            try:
                self.samples.append((time.time(), self.read()))
            except Exception as e:  # noqa: BLE001 - a failed poll is reported, the load test goes on
                self.last_error = f"{type(e).__name__}: {e}"
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> ReplicaPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class ServeReplicas:
    """Where replica counts come from, or why there are none."""

    read: ReplicaReader | None
    note: str | None = None
    connected_here: bool = False  # we called ray.init, so we disconnect afterwards

    def close(self) -> None:
        if self.connected_here:
            import ray

            ray.shutdown()


def serve_replicas(app_name: str, ray_address: str | None) -> ServeReplicas:
    """Replica counts from ``ray.serve.status()``: over the caller's Ray connection if there is one, else
    by connecting to ``ray_address``; otherwise none, with the reason."""
    # Only an imported ray can be connected already; importing it just to ask costs seconds.
    already = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if not already and not ray_address:
        return ServeReplicas(None, "no Ray connection: pass --ray-address or set RAY_ADDRESS "
                                   "(or run under `ray job submit`) to record replica counts")
    import ray

    if not already:
        try:
            ray.init(address=ray_address, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - no replica counts is not worth failing the load test
            return ServeReplicas(None, f"could not connect to Ray at {ray_address}: {type(e).__name__}: {e}")

    def read() -> dict[str, int]:
        from ray import serve

        applications = serve.status().applications
        if app_name not in applications:
            raise LookupError(f"no Serve application {app_name!r} (running: {sorted(applications)}); see --app")
        return {name: int(d.replica_states.get("RUNNING", 0))
                for name, d in applications[app_name].deployments.items()}

    return ServeReplicas(read, connected_here=not already)


class Latency(BaseModel):
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class Second(BaseModel):
    """One second of the run (``t`` seconds after the first request), warm-up included."""

    t: int
    sent: int
    ok: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


class ReplicaSample(BaseModel):
    t: float  # seconds after the first request (negative: before it)
    running: dict[str, int]  # deployment → RUNNING replicas


class LoadtestReport(BaseModel):
    """Everything a load test measured; rates, latencies and errors cover the window after warm-up."""

    url: str
    mode: Literal["rate", "users"]
    target_rate: float | None
    users: int
    warmup_s: int
    duration_s: int
    measured_s: float  # the measured window: duration_s unless Locust stopped before its end
    started_at: str | None  # the first request, UTC
    requests_sent: int  # warm-up included
    requests_measured: int
    sent_per_s: float
    throughput_per_s: float  # 200 answers per second
    latency: Latency | None  # over 200 answers; None when there were none
    errors_by_status: dict[str, int]  # "503", "422", ..., "connection_error"
    requests_by_name: dict[str, int]
    saturated: bool
    saturation_note: str | None
    timeline: list[Second]
    replicas: list[ReplicaSample] | None
    replicas_note: str | None
    locust_command: list[str]
    locust_version: str


def latency_of(latencies_ms: Sequence[float]) -> Latency | None:
    if not latencies_ms:
        return None
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms, dtype=float), [50, 95, 99])
    return Latency(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), max_ms=float(max(latencies_ms)))


def status_label(status: int) -> str:
    return "connection_error" if status == CONNECTION_ERROR else str(status)


def timeline_of(records: Sequence[RequestRecord], t0: float, seconds: int) -> list[Second]:
    by_second: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_second[int(r.start - t0)].append(r)
    last = max([seconds - 1, *by_second])
    timeline = []
    for t in range(last + 1):
        bucket = by_second.get(t, [])
        ok_latency = latency_of([r.latency_ms for r in bucket if r.status == OK])
        timeline.append(Second(t=t, sent=len(bucket), ok=sum(r.status == OK for r in bucket),
                               errors=sum(r.status != OK for r in bucket),
                               p50_ms=ok_latency.p50_ms if ok_latency else None,
                               p99_ms=ok_latency.p99_ms if ok_latency else None))
    return timeline


def saturation_of(settings: LoadtestSettings, sent_per_s: float, throughput_per_s: float) -> str | None:
    """Why the target rate was not achieved, or None when it was (or there is no target)."""
    if settings.rate is None or throughput_per_s >= SATURATION_SHARE * settings.rate:
        return None
    achieved = f"achieved {throughput_per_s:.1f} of {settings.rate:g} requests/s answered 200"
    if sent_per_s < SATURATION_SHARE * settings.rate:
        return (f"{achieved}; only {sent_per_s:.1f}/s were sent because all {settings.simulated_users} users "
                "were waiting on answers (rate × latency reached --max-concurrency): the service is "
                "saturated at this concurrency (raise --max-concurrency to offer more)")
    return f"{achieved}; the rest were errors: the service is shedding or failing load"


def compute_report(records: Sequence[RequestRecord], settings: LoadtestSettings, command: Sequence[str],
                   version: str, replica_samples: Iterable[tuple[float, dict[str, int]]] | None = None,
                   replicas_note: str | None = None, stopped_at: float | None = None) -> LoadtestReport:
    """The report over ``records``: the clock starts at the first request; the first ``warmup_s`` seconds
    count only in ``requests_sent`` and the timeline, and so does anything after the measured window, which
    ends ``duration_s`` later or when Locust began stopping (``stopped_at``), whichever came first."""
    t0 = min((r.start for r in records), default=None)
    origin = t0 if t0 is not None else time.time()
    window_start = origin + settings.warmup_s
    window_end = min(window_start + settings.duration_s, stopped_at if stopped_at is not None else float("inf"))
    measured_s = max(window_end - window_start, 0.0)
    measured = [r for r in records if window_start <= r.start < window_end]
    ok_latencies = [r.latency_ms for r in measured if r.status == OK]
    sent_per_s = len(measured) / measured_s if measured_s else 0.0
    throughput_per_s = len(ok_latencies) / measured_s if measured_s else 0.0
    errors = Counter(status_label(r.status) for r in measured if r.status != OK)
    note = saturation_of(settings, sent_per_s, throughput_per_s)
    replicas = None if replica_samples is None else [ReplicaSample(t=round(at - origin, 3), running=counts)
                                                     for at, counts in replica_samples]
    return LoadtestReport(
        url=settings.base_url, mode=settings.mode, target_rate=settings.rate, users=settings.simulated_users,
        warmup_s=settings.warmup_s, duration_s=settings.duration_s, measured_s=round(measured_s, 3),
        started_at=datetime.fromtimestamp(t0, timezone.utc).isoformat() if t0 is not None else None,
        requests_sent=len(records), requests_measured=len(measured), sent_per_s=sent_per_s,
        throughput_per_s=throughput_per_s, latency=latency_of(ok_latencies),
        errors_by_status=dict(sorted(errors.items())),
        requests_by_name=dict(sorted(Counter(r.name for r in measured).items())),
        saturated=note is not None, saturation_note=note,
        timeline=timeline_of(records, origin, settings.warmup_s + settings.duration_s),
        replicas=replicas, replicas_note=replicas_note, locust_command=list(command), locust_version=version)


def plot_report(report: LoadtestReport, path: Path) -> Path:
    """Latency (p50/p99) over time on top; throughput and replicas per deployment below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [s.t for s in report.timeline]
    fig, (latency_ax, load_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label in ("p50_ms", "p99_ms"):
        values = [getattr(s, label) for s in report.timeline]
        latency_ax.plot(seconds, [np.nan if v is None else v for v in values], marker=".", label=label[:3])
    latency_ax.set_ylabel("latency of 200s (ms)")
    load_ax.plot(seconds, [s.ok for s in report.timeline], color="tab:green", label="200 answers/s")
    load_ax.plot(seconds, [s.errors for s in report.timeline], color="tab:red", label="errors/s")
    load_ax.set_ylabel("requests/s")
    load_ax.set_xlabel("seconds since the first request")
    handles = []
    if report.replicas:
        replica_ax = load_ax.twinx()
        for name in sorted({name for sample in report.replicas for name in sample.running}):
            replica_ax.step([s.t for s in report.replicas], [s.running.get(name, 0) for s in report.replicas],
                            where="post", linestyle="--", label=f"{name} replicas")
        replica_ax.set_ylabel("RUNNING replicas")
        replica_ax.yaxis.get_major_locator().set_params(integer=True)
        handles = replica_ax.get_legend_handles_labels()[0]
    for ax in (latency_ax, load_ax):
        ax.axvline(report.warmup_s, color="grey", linestyle=":", label="end of warm-up")
        ax.grid(alpha=0.3)
    latency_ax.legend(loc="upper left")
    load_ax.legend(handles=load_ax.get_legend_handles_labels()[0] + handles, loc="upper left", fontsize="small")
    target = f"{report.target_rate:g} req/s target" if report.target_rate else f"{report.users} users"
    fig.suptitle(f"rayrec loadtest: {target}, {report.throughput_per_s:.1f} req/s answered 200 ({report.url})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: LoadtestReport, out_dir: Path) -> tuple[Path, Path]:
    json_path = out_dir / "report.json"
    json_path.write_text(report.model_dump_json(indent=2) + "\n")
    return json_path, plot_report(report, out_dir / "report.png")


def default_out_dir(root: Path = Path("runs/loadtest")) -> Path:
    return root / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_loadtest(settings: LoadtestSettings, out_dir: Path, on_tick: TickCallback | None = None
                 ) -> LoadtestReport:
    """Check the URL answers, run Locust while polling replica counts, and write ``report.json`` and
    ``report.png`` (plus ``records/`` and ``locust.log``) to ``out_dir``."""
    version = locust_version()
    check_reachable(settings.base_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = serve_replicas(settings.app_name, settings.ray_address)
    try:
        if source.read is None:
            command = run_locust(settings, out_dir, on_tick)
            samples, note = None, source.note
        else:
            with ReplicaPoller(source.read, settings.replicas_every_s) as poller:
                command = run_locust(settings, out_dir, on_tick)
            samples = poller.samples or None
            note = poller.last_error and (f"{'some' if samples else 'every'} replica poll failed, the last "
                                          f"with {poller.last_error}")
    finally:
        source.close()
    records_dir = out_dir / "records"
    report = compute_report(read_records(records_dir), settings, command, version, samples, note,
                            read_stopped_at(records_dir))
    write_report(report, out_dir)
    return report
