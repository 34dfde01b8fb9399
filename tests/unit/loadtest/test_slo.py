"""The serving SLO: degraded-answer classification from response bodies, the step rule, and the bisection
for the highest passing rate over a fake measurement."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from rayrec.loadtest.slo import (
    BAD_BODY,
    DEGRADED,
    OK,
    AnswerExpectation,
    RateSearchSettings,
    SloRule,
    classify_answer,
    search_max_rate,
)
from rayrec.release import ReleaseManifest

RANKED_TRENDING = AnswerExpectation(ranked=True, cold_start_trending=True)
RANKED_MODEL = AnswerExpectation(ranked=True, cold_start_trending=False)


def body(reranked: bool, cold_start: bool = False) -> bytes:
    return json.dumps({"user_id": "U1", "items": [], "version": "v1", "cold_start": cold_start,
                       "reranked": reranked, "took_ms": 1.0}).encode()


@pytest.mark.parametrize(("answer", "expect", "outcome"), [
    (body(reranked=True), RANKED_TRENDING, OK),
    (body(reranked=False), RANKED_TRENDING, DEGRADED),  # the ranker timed out or failed: retrieval order
    (body(reranked=False, cold_start=True), RANKED_TRENDING, OK),  # trend order by design
    (body(reranked=False, cold_start=True), AnswerExpectation(ranked=True, cold_start_trending=False), DEGRADED),
    (body(reranked=False), AnswerExpectation(ranked=False, cold_start_trending=False), OK),  # no ranker in use
])  # fmt: skip
def test_degraded_answers_are_told_from_full_ones(answer: bytes, expect: AnswerExpectation, outcome: str) -> None:
    assert classify_answer(200, answer, expect) == outcome


@pytest.mark.parametrize(("status", "answer", "outcome"), [
    (503, b'{"detail": "overloaded"}', "http_503"),
    (200, b"<html>oops</html>", BAD_BODY),
    (200, b'{"items": []}', BAD_BODY),  # no reranked / cold_start fields
    (200, b'{"reranked": "false", "cold_start": false}', BAD_BODY),
    (200, b"[]", BAD_BODY),
])  # fmt: skip
def test_non_answers_are_errors(status: int, answer: bytes, outcome: str) -> None:
    assert classify_answer(status, answer, RANKED_TRENDING) == outcome


def _manifest(**fields: Any) -> ReleaseManifest:
    return ReleaseManifest(version="v1", created_at="2026-01-01T00:00:00Z", config_name="t", vocab_fingerprint="f",
                           n_items=3, dim=4, title_tokens=2, history_length=5, files={}, **fields)


def test_expectation_reads_the_release_policy() -> None:
    trending = {"window_days": 7.0, "as_of_ms": 1, "cold_start": "trending"}
    assert AnswerExpectation.for_release(_manifest(trend=trending), True) == RANKED_TRENDING
    assert AnswerExpectation.for_release(_manifest(), True).cold_start_trending is False  # built before the policy
    assert AnswerExpectation.for_release(_manifest(trend={**trending, "cold_start": "model"}), True) == RANKED_MODEL
    assert AnswerExpectation.for_release(_manifest(), False).ranked is False


@pytest.mark.parametrize(("p99", "requests", "errors", "degraded", "passes"), [
    (99.9, 1000, 9, 0, True),
    (100.0, 1000, 0, 0, False),  # strictly under the bound
    (50.0, 1000, 0, 1, False),  # one degraded answer is enough to fail
    (50.0, 1000, 10, 0, False),  # 1 % errors is not under 1 %
    (math.nan, 10, 10, 0, False),  # no answers at all
    (math.nan, 0, 0, 0, False),
])  # fmt: skip
def test_slo_rule(p99: float, requests: int, errors: int, degraded: int, passes: bool) -> None:
    reasons = SloRule().failures(p99, requests, errors, degraded)
    assert (reasons == []) is passes
    assert "degraded" in SloRule().to_json()["rule"]


def search_with_limit(limit: float, settings: RateSearchSettings):
    """A fake system that meets the SLO at any rate up to ``limit`` req/s, and the rates it was offered."""
    offered: list[float] = []

    def measure(rate: float) -> float:
        offered.append(rate)
        return rate

    return search_max_rate(measure, lambda rate: rate <= limit, settings), offered


@pytest.mark.parametrize("limit", [5.5, 37.0, 49.9, 50.0, 123.4, 777.0, 1599.0])
def test_bisection_converges_within_tolerance(limit: float) -> None:
    settings = RateSearchSettings(start=50, growth=2, floor=5, cap=1600, tolerance=1.05)
    search, offered = search_with_limit(limit, settings)
    assert search.outcome == "found"
    best, fail = search.best, search.first_fail
    assert best is not None and fail is not None
    assert best.rate <= limit < fail.rate
    assert fail.rate / best.rate <= 1.05
    assert limit / best.rate <= 1.05
    assert len(offered) <= settings.max_trials()
    assert all(settings.floor <= r <= settings.cap for r in offered)
    assert [t.rate for t in search.trials] == offered


def test_nothing_passes() -> None:
    settings = RateSearchSettings(start=50, growth=2, floor=5, cap=1600)
    search, offered = search_with_limit(1.0, settings)
    assert search.outcome == "none_passed"
    assert search.best is None
    assert offered == [50, 25, 12.5, 6.25, 5]  # down by the growth factor, stopping at the floor
    assert search.first_fail is not None and search.first_fail.rate == 5


def test_everything_passes_up_to_the_cap() -> None:
    settings = RateSearchSettings(start=50, growth=2, floor=5, cap=1000)
    search, offered = search_with_limit(math.inf, settings)
    assert search.outcome == "capped"
    assert offered == [50, 100, 200, 400, 800, 1000]  # the cap itself is measured
    assert search.best is not None and search.best.rate == 1000
    assert search.first_fail is None


def test_max_trials_bounds_the_worst_case() -> None:
    settings = RateSearchSettings(start=50, growth=2, floor=5, cap=1600, tolerance=1.05)
    # 50 → 1600 is 5 doublings, 2 → 1.05 is 4 square roots
    assert settings.max_trials() == 1 + 5 + 4
    with pytest.raises(ValueError):
        RateSearchSettings(start=1, floor=5)
