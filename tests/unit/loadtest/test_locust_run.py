"""A real Locust subprocess against a real local HTTP server: every request the server answered is
recorded with its status, and both modes write the report files."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rayrec.loadtest import runner
from rayrec.loadtest.contract import RECOMMEND, SEARCH, SIMILAR, RequestMix
from rayrec.loadtest.runner import LoadtestSettings, ServeReplicas

MISSING_ITEM = "I999999"


class FakeServing(ThreadingHTTPServer):
    """Answers like the serving app: 503 for users whose id ends in 7, 404 for one unknown item."""

    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs when all simulated users connect at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeServingHandler)
        self.answered: Counter[tuple[str, int]] = Counter()  # (request name, status)
        self.lock = threading.Lock()

    def count(self, name: str, status: int) -> None:
        with self.lock:
            self.answered[name, status] += 1


class FakeServingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
    server: FakeServing

    def log_message(self, *_: object) -> None:
        pass

    def answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.answer(200, {"status": "ok"})
            return
        status = 404 if MISSING_ITEM in self.path else 200
        self.server.count(SIMILAR, status)
        self.answer(status, {"items": []})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 503 if request["user_id"].endswith("7") else 200
        self.server.count(SEARCH if self.path == "/v1/search" and request.get("query") else RECOMMEND, status)
        self.answer(status, {"items": [], "version": "v1"})


@pytest.fixture
def serving() -> Iterator[FakeServing]:
    server = FakeServing()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_replicas(monkeypatch) -> None:
    monkeypatch.setattr(runner, "serve_replicas", lambda app, address: ServeReplicas(lambda: {"Ingress": 2}))


def run(settings: LoadtestSettings, out_dir: Path) -> tuple[runner.LoadtestReport, Counter[tuple[str, int]]]:
    report = runner.run_loadtest(settings, out_dir)
    recorded = Counter((r.name, r.status) for r in runner.read_records(out_dir / "records"))
    return report, recorded


def assert_report_files(out_dir: Path, report: runner.LoadtestReport) -> None:
    assert runner.LoadtestReport.model_validate_json((out_dir / "report.json").read_text()) == report
    assert (out_dir / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_fixed_rate_records_every_answered_request(serving, fake_replicas, tmp_path):
    items = tmp_path / "items.txt"
    items.write_text(f"I000001\nI000002\n{MISSING_ITEM}\n")
    queries = tmp_path / "queries.txt"
    queries.write_text("chef knife\ndog treats\n")
    settings = LoadtestSettings(
        url=f"http://127.0.0.1:{serving.server_port}", rate=20.0, max_concurrency=8, warmup_s=1, duration_s=2,
        mix=RequestMix(users_pool=100, unknown_fraction=0.2, k=5, similar_fraction=0.3, items_file=items,
                       search_fraction=0.3, queries_file=queries),
        replicas_every_s=0.5)
    report, recorded = run(settings, tmp_path / "out")

    assert recorded == serving.answered
    assert report.requests_sent == sum(serving.answered.values()) > 0
    assert {name for name, _ in recorded} == {RECOMMEND, SIMILAR, SEARCH}
    assert set(report.errors_by_status) <= {"404", "503"}
    ok_measured = report.throughput_per_s * report.measured_s
    assert sum(report.errors_by_status.values()) + ok_measured == pytest.approx(report.requests_measured)
    assert report.replicas and report.replicas[0].running == {"Ingress": 2}
    assert report.locust_version and report.locust_command[-1] == "0"
    assert_report_files(tmp_path / "out", report)


def test_fixed_concurrency_runs_closed_loop(serving, fake_replicas, tmp_path):
    settings = LoadtestSettings(url=f"http://127.0.0.1:{serving.server_port}", users=2, warmup_s=1, duration_s=1)
    report, recorded = run(settings, tmp_path / "out")

    assert recorded == serving.answered
    assert report.mode == "users" and report.users == 2 and not report.saturated
    assert report.requests_measured > 0 and report.latency is not None
    assert_report_files(tmp_path / "out", report)
