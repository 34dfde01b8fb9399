"""The load-test report from recorded requests, the Locust command line, settings checks and the replica
poller, without running Locust."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rayrec.loadtest import runner
from rayrec.loadtest.contract import ENV_RECORDS_DIR, ENV_USER_RPS, RECOMMEND, SIMILAR, RequestMix, RequestRecord
from rayrec.loadtest.runner import LoadtestError, LoadtestReport, LoadtestSettings, ReplicaPoller

T0 = 1_000.0
URL = "http://serving.test:8000/shop"


def record(at: float, latency_ms: float = 5.0, status: int = 200, name: str = RECOMMEND) -> RequestRecord:
    return RequestRecord(start=T0 + at, latency_ms=latency_ms, status=status, name=name)


def synthetic_run() -> list[RequestRecord]:
    """2 s warm-up with slow answers, then 4 s: 100 OKs of 1..100 ms, 3 × 503, 2 unanswered, 1 × 422; and one
    straggler after the end."""
    warmup = [record(i * 0.2, latency_ms=999.0) for i in range(10)]
    ok = [record(2 + i * 0.039, latency_ms=float(i + 1), name=SIMILAR if i % 4 == 0 else RECOMMEND)
          for i in range(100)]
    errors = [record(2.5, status=503), record(3.5, status=503), record(5.9, status=503),
              record(4.0, status=0), record(4.1, status=0), record(4.2, status=422)]
    return [*warmup, *ok, *errors, record(6.5)]


def settings(**overrides: object) -> LoadtestSettings:
    return LoadtestSettings(**{"url": URL, "rate": 25.0, "warmup_s": 2, "duration_s": 4, **overrides})


def report_for(records: list[RequestRecord], **overrides: object) -> LoadtestReport:
    return runner.compute_report(records, settings(**overrides), ["locust"], "2.47.0")


def test_warmup_and_stragglers_are_left_out_of_the_numbers():
    report = report_for(synthetic_run())
    assert report.requests_sent == 117
    assert report.requests_measured == 106
    assert report.sent_per_s == pytest.approx(106 / 4)
    assert report.throughput_per_s == pytest.approx(100 / 4)
    assert report.requests_by_name == {RECOMMEND: 81, SIMILAR: 25}
    assert report.started_at == "1970-01-01T00:16:40+00:00"


def test_the_window_ends_where_locust_began_stopping():
    report = runner.compute_report(synthetic_run(), settings(), ["locust"], "2.47.0", stopped_at=T0 + 4.0)
    assert (report.measured_s, report.requests_measured) == (2.0, 54)  # 52 OKs (2.0..3.989 s) + 2 × 503
    assert report.throughput_per_s == pytest.approx(52 / 2)
    assert report.requests_sent == 117
    late_stop = runner.compute_report(synthetic_run(), settings(), ["locust"], "2.47.0", stopped_at=T0 + 9.0)
    assert late_stop.measured_s == 4.0


def test_latency_percentiles_cover_only_ok_answers_in_the_window():
    latency = report_for(synthetic_run()).latency
    assert latency is not None
    expected = np.percentile(np.arange(1, 101, dtype=float), [50, 95, 99])
    assert [latency.p50_ms, latency.p95_ms, latency.p99_ms] == pytest.approx(list(expected))
    assert latency.p50_ms == pytest.approx(50.5)
    assert latency.max_ms == 100.0


def test_errors_are_counted_by_status_and_unanswered_ones_as_connection_errors():
    assert report_for(synthetic_run()).errors_by_status == {"422": 1, "503": 3, "connection_error": 2}


def test_no_ok_answer_means_no_latency_rather_than_zero():
    report = report_for([record(3.0, status=503)], warmup_s=0)
    assert report.latency is None
    assert report.throughput_per_s == 0


def test_timeline_has_every_second_including_warmup_and_empty_ones():
    timeline = report_for(synthetic_run()).timeline
    assert [s.t for s in timeline] == list(range(7))  # 6 s run + the straggler's second
    assert sum(s.sent for s in timeline) == 117
    assert timeline[0].p50_ms == 999.0 and timeline[0].errors == 0
    assert timeline[4].errors == 3  # two unanswered and a 422 in second 4
    quiet = report_for([record(0.1), record(3.2)], warmup_s=0).timeline
    assert [(s.sent, s.p99_ms) for s in quiet[1:3]] == [(0, None), (0, None)]


@pytest.mark.parametrize(("rate", "saturated", "because"), [
    (25.0, False, None),  # 25 OK/s achieved: exactly the target
    (26.0, False, None),  # 25 ≥ 95% of 26
    (27.0, True, "errors"),  # 26.5/s were sent (≥ 95%), but only 25/s answered 200
    (40.0, True, "--max-concurrency"),  # not even sent: the users were all busy
])
def test_saturation_is_flagged_below_95_percent_of_the_target(rate, saturated, because):
    report = report_for(synthetic_run(), rate=rate)
    assert report.saturated is saturated
    if because is None:
        assert report.saturation_note is None
    else:
        assert because in report.saturation_note


def test_fixed_concurrency_has_no_target_to_miss():
    report = report_for(synthetic_run(), rate=None, users=3)
    assert (report.mode, report.target_rate, report.users, report.saturated) == ("users", None, 3, False)


def test_replica_samples_are_placed_on_the_run_clock():
    report = runner.compute_report(synthetic_run(), settings(), ["locust"], "2.47.0",
                                   [(T0 - 1.0, {"Ingress": 1}), (T0 + 2.5, {"Ingress": 2, "Ranking": 1})])
    assert [(s.t, s.running) for s in report.replicas] == [(-1.0, {"Ingress": 1}),
                                                           (2.5, {"Ingress": 2, "Ranking": 1})]
    assert runner.compute_report([], settings(), [], "x", None, "no Ray").replicas is None


def test_rate_mode_command_paces_max_concurrency_users(tmp_path):
    s = settings(rate=20.0, max_concurrency=8, warmup_s=1, duration_s=2)
    command = runner.locust_command(s, python="py")
    assert command[:5] == ["py", "-m", "locust", "-f", str(runner.LOCUSTFILE)]
    assert runner.LOCUSTFILE.is_file()
    options = dict(zip(command[5:], command[6:]))
    assert (options["--host"], options["-u"], options["-r"], options["--run-time"]) == (URL, "8", "8", "4s")
    assert {"--headless", "--only-summary"} <= set(command)
    env = runner.locust_env(s, tmp_path, base_env={})
    assert float(env[ENV_USER_RPS]) == pytest.approx(20.0 / 8)
    assert env[ENV_RECORDS_DIR] == str(tmp_path.resolve())


def test_users_mode_command_starts_everyone_and_never_waits(tmp_path):
    s = settings(rate=None, users=5, url=URL + "/")
    command = runner.locust_command(s)
    options = dict(zip(command[5:], command[6:]))
    assert (options["--host"], options["-u"], options["-r"]) == (URL, "5", "5")
    assert ENV_USER_RPS not in runner.locust_env(s, tmp_path, base_env={ENV_USER_RPS: "3"})


def test_request_mix_travels_through_the_environment(tmp_path):
    items = tmp_path / "items.txt"
    items.write_text("I000001\n")
    mix = RequestMix(users_pool=50, unknown_fraction=0.25, k=7, similar_fraction=0.5, items_file=items)
    env = runner.locust_env(settings(mix=mix), tmp_path, base_env={})
    assert RequestMix.from_env(env) == RequestMix(50, 0.25, 7, 0.5, items.resolve())
    assert RequestMix.from_env({}) == RequestMix()


def test_records_round_trip_through_json():
    r = RequestRecord(start=T0 + 0.25, latency_ms=12.5, status=503, name=SIMILAR)
    assert RequestRecord.from_json(r.to_json()) == r


@pytest.mark.parametrize(("overrides", "message"), [
    ({"users": 4}, "exactly one of --rate"),
    ({"rate": None}, "exactly one of --rate"),
    ({"duration_s": 0}, "--duration"),
    ({"url": "127.0.0.1:8000"}, "http://"),
    ({"mix": RequestMix(similar_fraction=0.5)}, "--items-file"),
    ({"mix": RequestMix(unknown_fraction=1.5)}, "--unknown-fraction"),
    ({"mix": RequestMix(search_fraction=0.5)}, "--queries-file"),
    ({"mix": RequestMix(search_fraction=0.6, similar_fraction=0.6)}, "at most 1"),
])
def test_settings_a_user_can_fix_are_refused(overrides, message):
    with pytest.raises(LoadtestError, match=message):
        settings(**overrides)


def test_an_unreachable_url_is_refused_before_the_run():
    with pytest.raises(LoadtestError, match="does not answer"):
        runner.check_reachable("http://127.0.0.1:9", timeout_s=2)


def test_replica_poller_keeps_samples_and_reports_failed_polls():
    answers = iter([{"Ingress": 1}, RuntimeError("controller away")])

    def read() -> dict[str, int]:
        answer = next(answers, {"Ingress": 2})
        if isinstance(answer, Exception):
            raise answer
        return answer

    with ReplicaPoller(read, every_s=0.01) as poller:
        while poller.last_error is None:
            poller._stop.wait(0.01)
    assert poller.samples[0][1] == {"Ingress": 1}
    assert poller.last_error == "RuntimeError: controller away"


def test_without_a_ray_connection_replicas_are_none_with_the_reason(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    source = runner.serve_replicas("rayrec", None)
    assert source.read is None and "--ray-address" in source.note


def test_report_is_written_as_json_and_png(tmp_path):
    report = runner.compute_report(synthetic_run(), settings(), ["locust"], "2.47.0",
                                   [(T0, {"Ingress": 1}), (T0 + 3, {"Ingress": 2})])
    json_path, png_path = runner.write_report(report, tmp_path)
    assert LoadtestReport.model_validate(json.loads(json_path.read_text())) == report
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(png_path).stat().st_size > 10_000
