"""The Locust user `rayrec loadtest` runs, and the hook that records every request.

Loaded only by ``python -m locust -f <this file>`` (gevent-patched, in its own process), never imported by
rayrec. The runner configures it through environment variables (see ``contract``) and reads the records
back from ``records-<pid>.jsonl`` in ``$RAYREC_LOADTEST_RECORDS_DIR``.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import gevent
from locust import FastHttpUser, events, task

from rayrec.loadtest.contract import (
    CONNECTION_ERROR,
    ENV_RECORDS_DIR,
    ENV_USER_RPS,
    RECOMMEND,
    SEARCH,
    SIMILAR,
    RequestMix,
    RequestRecord,
)


class RecordsFile:
    """This process's records file, opened on first use so that `--processes` forks each get their own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pid: int | None = None
        self.file: TextIO | None = None

    def write(self, record: RequestRecord) -> None:
        if self.file is None or self.pid != os.getpid():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.pid = os.getpid()
            # Line-buffered: a killed run still leaves every finished request on disk.
            self.file = (self.folder / f"records-{self.pid}.jsonl").open("a", buffering=1)
        self.file.write(record.to_json() + "\n")

    def mark_stopped(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"stopped-{os.getpid()}.txt").write_text(repr(time.time()))

    def close(self) -> None:
        if self.file is not None and self.pid == os.getpid():
            self.file.close()
            self.file = None


RECORDS = RecordsFile(Path(os.environ[ENV_RECORDS_DIR]))
MIX = RequestMix.from_env()


def _lines(path: Path | None) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path else []


ITEM_IDS = _lines(MIX.items_file)
QUERIES = _lines(MIX.queries_file)
# Paced users send one request every PERIOD_S seconds; None: back to back (fixed concurrency).
PERIOD_S = 1 / float(os.environ[ENV_USER_RPS]) if os.environ.get(ENV_USER_RPS) else None
PACED_STARTS = itertools.count()


@events.request.add_listener
def record_request(name: str, response_time: float, response: Any, start_time: float | None = None,
                   **_: Any) -> None:
    status = int(getattr(response, "status_code", CONNECTION_ERROR) or CONNECTION_ERROR)
    sent = start_time if start_time is not None else time.time() - response_time / 1000
    RECORDS.write(RequestRecord(start=sent, latency_ms=response_time, status=status, name=name))


@events.test_stopping.add_listener
def mark_stopped(**_: Any) -> None:
    RECORDS.mark_stopped()


@events.quitting.add_listener
def close_records(**_: Any) -> None:
    RECORDS.close()


def user_id(rng: random.Random) -> str:
    if rng.random() < MIX.unknown_fraction:
        return f"loadtest-unknown-{uuid.uuid4().hex[:12]}"
    return f"U{rng.randint(1, MIX.users_pool):06d}"


class ServingUser(FastHttpUser):
    """One simulated client: recommendations for random users, and shares of searches and similar-item
    look-ups."""

    def on_start(self) -> None:
        self.rng = random.Random()
        self.next_send = time.monotonic()
        if PERIOD_S is not None:
            # Locust starts users in batches: the n-th of N paced users starts n/N of a period late so that
            # together they send evenly spaced requests from the start, not one burst per batch.
            users = max(1, int(getattr(self.environment.parsed_options, "num_users", 1) or 1))
            self.next_send += (next(PACED_STARTS) % users) * PERIOD_S / users
            gevent.sleep(max(0.0, self.next_send - time.monotonic()))

    def wait_time(self) -> float:
        if PERIOD_S is None:
            return 0.0
        # A fixed schedule rather than Locust's constant_throughput, which re-aligns every user to its
        # creation time (undoing the stagger): a slow answer makes this user's next request late, while
        # other users' requests stay on time, so the rate holds while free users remain (open loop).
        self.next_send += PERIOD_S
        return max(0.0, self.next_send - time.monotonic())

    @task
    def one_request(self) -> None:
        draw = self.rng.random()
        if QUERIES and draw < MIX.search_fraction:
            query = self.rng.choice(QUERIES)
            self.client.post("/v1/search", json={"query": query, "user_id": user_id(self.rng), "k": MIX.k},
                             name=SEARCH)
        elif ITEM_IDS and draw < MIX.search_fraction + MIX.similar_fraction:
            item = self.rng.choice(ITEM_IDS)
            self.client.get(f"/v1/items/{item}/similar?k={MIX.k}", name=SIMILAR)
        else:
            self.client.post("/v1/recommend", json={"user_id": user_id(self.rng), "k": MIX.k}, name=RECOMMEND)
