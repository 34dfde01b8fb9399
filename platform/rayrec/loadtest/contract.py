"""What the runner and the Locust process agree on: the environment variables that configure the request
mix, and the format of the per-request records.

Stdlib only: the locustfile imports this inside the gevent-patched Locust process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_RECORDS_DIR = "RAYREC_LOADTEST_RECORDS_DIR"
# Requests/s per simulated user; unset means no wait between requests (fixed concurrency).
ENV_USER_RPS = "RAYREC_LOADTEST_USER_RPS"
ENV_USERS_POOL = "RAYREC_LOADTEST_USERS_POOL"
ENV_UNKNOWN_FRACTION = "RAYREC_LOADTEST_UNKNOWN_FRACTION"
ENV_K = "RAYREC_LOADTEST_K"
ENV_SIMILAR_FRACTION = "RAYREC_LOADTEST_SIMILAR_FRACTION"
ENV_ITEMS_FILE = "RAYREC_LOADTEST_ITEMS_FILE"
ENV_SEARCH_FRACTION = "RAYREC_LOADTEST_SEARCH_FRACTION"
ENV_QUERIES_FILE = "RAYREC_LOADTEST_QUERIES_FILE"

RECORDS_GLOB = "records-*.jsonl"
# When Locust began stopping (epoch seconds): requests scheduled after it were never sent.
STOPPED_GLOB = "stopped-*.txt"
RECOMMEND = "recommend"
SIMILAR = "similar"
SEARCH = "search"
CONNECTION_ERROR = 0  # the status recorded when no HTTP answer came (refused, reset, timed out)


@dataclass(frozen=True)
class RequestMix:
    """Which requests the simulated users send."""

    users_pool: int = 1000  # known users are U000001..U<pool>, the synthetic shop's id space
    unknown_fraction: float = 0.0  # share of recommendations for users serving has never seen
    k: int = 10
    similar_fraction: float = 0.0  # share of similar-item look-ups instead of recommendations
    items_file: Path | None = None  # item ids for the look-ups, one per line
    search_fraction: float = 0.0  # share of searches (by a known or unknown user, like recommendations)
    queries_file: Path | None = None  # search queries, one per line

    def to_env(self) -> dict[str, str]:
        env = {ENV_USERS_POOL: str(self.users_pool), ENV_UNKNOWN_FRACTION: repr(self.unknown_fraction),
               ENV_K: str(self.k), ENV_SIMILAR_FRACTION: repr(self.similar_fraction),
               ENV_SEARCH_FRACTION: repr(self.search_fraction)}
        for name, path in ((ENV_ITEMS_FILE, self.items_file), (ENV_QUERIES_FILE, self.queries_file)):
            if path is not None:
                env[name] = str(Path(path).resolve())
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RequestMix:
        items_file, queries_file = environ.get(ENV_ITEMS_FILE), environ.get(ENV_QUERIES_FILE)
        return cls(users_pool=int(environ.get(ENV_USERS_POOL, cls.users_pool)),
                   unknown_fraction=float(environ.get(ENV_UNKNOWN_FRACTION, cls.unknown_fraction)),
                   k=int(environ.get(ENV_K, cls.k)),
                   similar_fraction=float(environ.get(ENV_SIMILAR_FRACTION, cls.similar_fraction)),
                   items_file=Path(items_file) if items_file else None,
                   search_fraction=float(environ.get(ENV_SEARCH_FRACTION, cls.search_fraction)),
                   queries_file=Path(queries_file) if queries_file else None)


@dataclass(frozen=True)
class RequestRecord:
    """One request as Locust saw it."""

    start: float  # epoch seconds when it was sent
    latency_ms: float
    status: int  # HTTP status, CONNECTION_ERROR when there was none
    name: str  # RECOMMEND, SIMILAR or SEARCH

    def to_json(self) -> str:
        return json.dumps({"start": self.start, "latency_ms": round(self.latency_ms, 3), "status": self.status,
                           "name": self.name}, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> RequestRecord:
        fields: dict[str, Any] = json.loads(line)
        return cls(start=float(fields["start"]), latency_ms=float(fields["latency_ms"]),
                   status=int(fields["status"]), name=str(fields["name"]))
