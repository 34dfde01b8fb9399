"""The serving SLO and the search for the highest rate that meets it: which answers are full, degraded or
failed, the rule one measured load step must pass, and the bisection over offered rates.

Pure Python (no Ray, no HTTP client): ``benchmarks/serving.py`` drives it with real load, the unit tests
with a fake measurement.

Degraded answers: ``POST /v1/recommend`` answers 200 with ``"reranked": false`` when the ranking stage
did not answer in time or failed (``RetrievalStage.rank`` falls back to retrieval order). That is a worse
answer served fast, so a load test that counted it as a success would reward a system for shedding its
ranker under load. The one ``reranked: false`` that is not degraded is a cold start under the release's
trending policy (``release.json`` ``trend.cold_start == "trending"``), which keeps trend order by design;
and with no ranker in use (``serve.use_ranker`` false, or a release without one) nothing is reranked.
``reranked`` is the only field of the response that marks a fallback today.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, TypeVar

from rayrec.release import ReleaseManifest

OK = "ok"
DEGRADED = "degraded"
BAD_BODY = "bad_body"  # a 200 whose body is not a recommendation

T = TypeVar("T")
SearchOutcome = Literal["found", "none_passed", "capped"]


@dataclass(frozen=True)
class AnswerExpectation:
    """What a full answer of the release under test looks like."""

    ranked: bool  # a ranker is in use, so answers should say ``reranked: true``
    cold_start_trending: bool  # cold starts keep the trending order (not reranked, by design)

    @classmethod
    def for_release(cls, manifest: ReleaseManifest, ranker_in_use: bool) -> AnswerExpectation:
        """From a release's manifest and whether serving ranks with it."""
        return cls(ranked=ranker_in_use, cold_start_trending=manifest.cold_start_trending)


def classify_answer(status: int, body: bytes | str, expect: AnswerExpectation) -> str:
    """``OK``, ``DEGRADED``, or an error kind (``http_<status>``, ``BAD_BODY``) for one HTTP answer."""
    if status != 200:
        return f"http_{status}"
    try:
        answer = json.loads(body)
        reranked, cold_start = answer["reranked"], answer["cold_start"]
    except (ValueError, TypeError, KeyError):
        return BAD_BODY
    if not isinstance(reranked, bool) or not isinstance(cold_start, bool):
        return BAD_BODY
    expected = expect.ranked and not (cold_start and expect.cold_start_trending)
    return DEGRADED if expected and not reranked else OK


@dataclass(frozen=True)
class SloRule:
    """A load step meets the SLO when p99 of its answers is under ``p99_ms``, no more than
    ``max_degraded`` answers are degraded, and errors are under ``max_error_share`` of its requests."""

    p99_ms: float = 100.0
    max_error_share: float = 0.01
    max_degraded: int = 0

    def describe(self) -> str:
        return (f"p99 < {self.p99_ms:g} ms over 200 answers, at most {self.max_degraded} degraded answers "
                f"(200 with reranked=false where a reranked answer was due), errors < {self.max_error_share:.0%} "
                "of requests (any other status, timeouts, connection errors, unreadable 200 bodies)")

    def failures(self, p99_ms: float, requests: int, errors: int, degraded: int) -> list[str]:
        """Why a step misses the SLO; empty when it meets it. A step without answers misses it."""
        out = []
        if not p99_ms < self.p99_ms:  # NaN (no answers) fails too
            out.append(f"p99 {p99_ms:.1f} ms ≥ {self.p99_ms:g}")
        if degraded > self.max_degraded:
            out.append(f"{degraded} degraded")
        if requests == 0 or errors >= self.max_error_share * requests:
            share = errors / requests if requests else 1.0
            out.append(f"errors {share:.1%} ≥ {self.max_error_share:.0%}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.describe()}


@dataclass(frozen=True)
class RateSearchSettings:
    """Coarse sweep from ``start`` by ``growth`` (up while steps pass, down while they fail), kept within
    [``floor``, ``cap``], then bisection (geometric) until the failing / passing rate ≤ ``tolerance``."""

    start: float = 50.0
    growth: float = 2.0
    floor: float = 5.0
    cap: float = 1600.0
    tolerance: float = 1.05

    def __post_init__(self) -> None:
        if not (0 < self.floor <= self.start <= self.cap and self.growth > 1 and self.tolerance > 1):
            raise ValueError(f"need 0 < floor <= start <= cap, growth > 1, tolerance > 1; got {self}")

    def max_trials(self) -> int:
        """The most measurements a search can take (to budget a run's duration)."""
        sweep = max(_steps(self.cap / self.start, self.growth), _steps(self.start / self.floor, self.growth))
        # each bisection step takes the square root of the bracket's ratio, which starts at ≤ growth
        bisect = _steps(math.log(self.growth) / math.log(self.tolerance), 2.0)
        return 1 + sweep + bisect


def _steps(ratio: float, factor: float) -> int:
    """How many multiplications by ``factor`` it takes to cover ``ratio``."""
    return max(0, math.ceil(math.log(ratio) / math.log(factor) - 1e-9))  # the margin: exact powers are not one more


@dataclass(frozen=True)
class Trial(Generic[T]):
    rate: float
    result: T
    passed: bool


@dataclass
class RateSearch(Generic[T]):
    """Every measurement in the order taken; ``best`` is the highest passing one, ``first_fail`` the lowest
    failing one above it (None when the search reached the cap)."""

    settings: RateSearchSettings
    trials: list[Trial[T]] = field(default_factory=list)
    outcome: SearchOutcome = "found"

    @property
    def best(self) -> Trial[T] | None:
        return max((t for t in self.trials if t.passed), key=lambda t: t.rate, default=None)

    @property
    def first_fail(self) -> Trial[T] | None:
        best = self.best
        above = [t for t in self.trials if not t.passed and (best is None or t.rate > best.rate)]
        return min(above, key=lambda t: t.rate, default=None)


def search_max_rate(measure: Callable[[float], T], passes: Callable[[T], bool],
                    settings: RateSearchSettings) -> RateSearch[T]:
    """The highest offered rate whose measurement passes, to within ``settings.tolerance``: a coarse
    sweep brackets it between a passing and a failing rate, bisection narrows the bracket."""
    search: RateSearch[T] = RateSearch(settings)

    def trial(rate: float) -> bool:
        result = measure(rate)
        search.trials.append(Trial(rate, result, passes(result)))
        return search.trials[-1].passed

    bracket = _bracket(trial, settings)
    if bracket is None:
        search.outcome = "capped" if search.trials[-1].passed else "none_passed"
        return search
    lo, hi = bracket
    while hi / lo > settings.tolerance:
        mid = math.sqrt(lo * hi)  # rates are compared as ratios, so halve the ratio, not the difference
        if trial(mid):
            lo = mid
        else:
            hi = mid
    return search


def _bracket(trial: Callable[[float], bool], s: RateSearchSettings) -> tuple[float, float] | None:
    """(passing rate, failing rate) a factor ``growth`` apart at most, or None when every rate up to the
    cap passed or none down to the floor did."""
    rate = s.start
    if trial(rate):
        while rate < s.cap:
            higher = min(rate * s.growth, s.cap)
            if not trial(higher):
                return rate, higher
            rate = higher
        return None
    while rate > s.floor:
        lower = max(rate / s.growth, s.floor)
        if trial(lower):
            return lower, rate
        rate = lower
    return None
