"""Starting the serving application from Python (`rayrec serve`, the demo, tests) and the sample
requests the demo prints.

`serve deploy configs/serve.yaml` is the other way in; both build the graph with ``build_app``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rayrec.config import RayrecConfig


class ServeStartError(RuntimeError):
    """The application did not come up; the message says which deployment and where its log is."""


def start_serving(cfg: RayrecConfig, version: str | None = None, timeout_s: float = 300.0) -> str:
    """Deploy the app on the connected Ray (HTTP on ``serve.host:serve.port``), wait until /readyz
    answers, and return the base URL."""
    from ray import serve

    from rayrec.serve.app import build_app, serve_logging

    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, logging_config=serve_logging(cfg.serve))
    try:
        serve.run(build_app(cfg, version), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix,
                  blocking=False)
    except RuntimeError as e:  # Serve's DEPLOY_FAILED: the cause is in the replica logs
        raise ServeStartError(f"{e} (replica logs: <ray session>/logs/serve/, e.g. "
                              "/tmp/ray/session_latest/logs/serve/)") from None
    base = f"http://{'127.0.0.1' if cfg.serve.host in ('0.0.0.0', '::') else cfg.serve.host}:{cfg.serve.port}"
    base += cfg.serve.route_prefix.rstrip("/")
    wait_ready(base, timeout_s)
    return base


def wait_ready(base: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = http_json("GET", f"{base}/readyz")
            if status == 200:
                return body
            last = f"{status}: {body}"
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    raise ServeStartError(f"{base}/readyz not ready after {timeout_s:.0f} s ({last})")


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 30.0,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) with the standard library; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload or b"null")
        except json.JSONDecodeError:
            return e.code, payload.decode(errors="replace")


def sample_requests(base: str, user_id: str, clicked: list[str], k: int = 5,
                    query: str | None = None) -> list[tuple[str, int, Any]]:
    """The demo's walk through the API: a known user, a new visitor (cold start) who then clicks
    ``clicked`` and gets recommendations shaped by those clicks at once, similar items, and ``query``
    searched anonymously and for the known user."""
    calls: list[tuple[str, int, Any]] = []

    def call(label: str, method: str, path: str, body: Any = None) -> Any:
        status, answer = http_json(method, base + path, body)
        calls.append((label, status, answer))
        return answer

    visitor = f"demo-visitor-{int(time.time())}"
    call(f"POST /v1/recommend user {user_id}", "POST", "/v1/recommend", {"user_id": user_id, "k": k})
    call(f"POST /v1/recommend new visitor {visitor} (cold start)", "POST", "/v1/recommend",
         {"user_id": visitor, "k": k})
    call(f"POST /v1/events {visitor} clicks {', '.join(clicked)}", "POST", "/v1/events",
         {"events": [{"user_id": visitor, "item_id": item, "event_type": "click"} for item in clicked]})
    call(f"POST /v1/recommend {visitor} after the clicks", "POST", "/v1/recommend", {"user_id": visitor, "k": k})
    call(f"GET /v1/items/{clicked[0]}/similar", "GET", f"/v1/items/{clicked[0]}/similar?k={k}")
    if query:
        call(f"POST /v1/search {query!r} (anonymous)", "POST", "/v1/search", {"query": query, "k": k})
        call(f"POST /v1/search {query!r} for user {user_id}", "POST", "/v1/search",
             {"query": query, "user_id": user_id, "k": k})
    return calls
