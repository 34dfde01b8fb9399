"""Test clients for a running Serve app: closed-loop load that records every answer (and one retry
of a failed request), and waiting on Serve's state."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from rayrec.release import ReleaseLayout
from rayrec.serve.launch import http_json

CLIENT_TIMEOUT_S = 60.0


@dataclass
class Answer:
    started: float  # time.monotonic() when the first try was sent
    status: int  # first try: HTTP status, -1 for a dropped connection or client timeout
    latency_s: float  # first try
    retry_status: int | None = None  # the one client retry, when the first try failed
    body: object = None


def post(url: str, body: dict, timeout_s: float = CLIENT_TIMEOUT_S) -> tuple[int, object, float]:
    started = time.perf_counter()
    try:
        status, answer = http_json("POST", url, body, timeout_s=timeout_s)
    except OSError as e:  # a dropped connection or a client timeout is a failed request too
        status, answer = -1, str(e)
    return status, answer, time.perf_counter() - started


def _retry_after_s(answer: object) -> float:
    return 1.0  # http_json drops headers; Serve's Retry-After here is 1 s (serve.retry_after_s)


def known_users(release: Path, n: int = 28) -> list[str]:
    """``n`` users with history in ``release``: answered by retrieval + ranker (history-less ones get
    the trending list, which the ranker does not order)."""
    return pq.read_table(ReleaseLayout(release).histories, columns=["user_id"]).column("user_id").to_pylist()[:n]


class ClosedLoop:
    """Closed-loop clients posting /v1/recommend until stopped; a failed request is retried once
    (after 1 s, Serve's Retry-After), and both outcomes are recorded. Clients cycle through ``users``
    (default: ids no release knows, i.e. the cold-start path)."""

    def __init__(self, base: str, clients: int, users: Sequence[str] | None = None) -> None:
        self.base, self.stop, self.answers = base, threading.Event(), []
        self.users = list(users) if users else None
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            user = self.users[(7 * i + n) % len(self.users)] if self.users else f"fault-{i}-{n % 7}"
            body = {"user_id": user, "k": 5}
            started = time.monotonic()
            status, answer, latency = post(f"{self.base}/v1/recommend", body)
            a = Answer(started, status, latency, body=answer)
            if status != 200:
                time.sleep(_retry_after_s(answer))
                a.retry_status = post(f"{self.base}/v1/recommend", body)[0]
            with self.lock:
                self.answers.append(a)
            n += 1

    def __enter__(self) -> ClosedLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2 * CLIENT_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self.threads), "a client is still waiting: a request hung"


def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))
