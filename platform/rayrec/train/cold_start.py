"""The one cold-user policy of an evaluation: which list a user with no history before the cutoff gets.

Every system, rayrec's included, answers its cold users with the same list, so the comparison of
systems is a comparison of what they do with a history. The policy is chosen on the validation
split's cold users, among all-time popularity and the most-interacted items of the last few days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rayrec.metrics import ranking_metrics
from rayrec.train.baselines import MostPopular, RecentlyPopular
from rayrec.train.evaluate import EvalSplit, Recommender
from rayrec.train.systems import subset_users

CHOICE_K = 20  # the policy is chosen on NDCG@20, the metric every headline quotes


@dataclass(frozen=True)
class ColdStartChoice:
    """The chosen policy (``window_days`` None = all-time popularity) and each candidate's validation NDCG@20."""

    window_days: float | None
    valid_ndcg: dict[str, float]

    def system(self) -> Recommender:
        return MostPopular() if self.window_days is None else RecentlyPopular(self.window_days)

    def describe(self) -> str:
        return "all-time popularity" if self.window_days is None else f"most interactions in the last {self.window_days:g} days"


def _label(window_days: float | None) -> str:
    return "popular" if window_days is None else f"recent {window_days:g}d"


def choose_cold_start(valid: EvalSplit, windows: Sequence[float], exclude_seen: bool = True) -> ColdStartChoice:
    """The candidate with the best NDCG@20 over the validation users with no history (ties: the first,
    all-time popularity); all-time popularity when the split has no such user."""
    cold = np.flatnonzero(valid.no_history)
    candidates: list[float | None] = [None, *windows]
    if cold.size == 0:
        return ColdStartChoice(None, {})
    users = subset_users(valid, cold)
    scores: dict[str, float] = {}
    for window in candidates:
        system = ColdStartChoice(window, {}).system()
        system.fit(valid)
        top = system.recommend(users, CHOICE_K, exclude_seen)
        scores[_label(window)] = float(ranking_metrics(top, users.targets, (CHOICE_K,))[f"ndcg@{CHOICE_K}"])
    best = max(range(len(candidates)), key=lambda i: (scores[_label(candidates[i])], -i))
    return ColdStartChoice(candidates[best], scores)
