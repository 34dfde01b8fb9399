"""The trained models as evaluated systems: retrieval alone, and retrieval followed by the ranker.

Both implement ``evaluate.Recommender`` so they are scored by exactly the code that scores the
baselines, on the same split, in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from rayrec.config import RayrecConfig
from rayrec.features.batches import dense_history_inputs
from rayrec.features.trend import append_trending, trending_first, trending_order
from rayrec.metrics import ranking_metrics, user_ndcg
from rayrec.models.ranker import Ranker
from rayrec.models.two_tower import TwoTowerModel
from rayrec.train.evaluate import EvalSplit, topk_excluding


def _history_tensors(split: EvalSplit, rows: slice) -> dict[str, torch.Tensor]:
    arrays = dense_history_inputs(split.history_items[rows], split.history_types[rows], split.history_gaps[rows])
    return {k: torch.as_tensor(v) for k, v in arrays.items()}


@torch.no_grad()
def user_vectors(model: TwoTowerModel, split: EvalSplit, batch: int = 1024) -> torch.Tensor:
    model.eval()
    out = []
    for lo in range(0, len(split.users), batch):
        h = _history_tensors(split, slice(lo, lo + batch))
        users = torch.as_tensor(split.users[lo:lo + batch], dtype=torch.long)
        out.append(model.user_embedding(h["hist_items"], h["hist_types"], h["hist_gaps"], users))
    return torch.cat(out) if out else torch.zeros(0, model.spec.dim)


class TwoTowerRecommender:
    """Full-catalog retrieval: user vector · every item vector."""

    def __init__(self, model: TwoTowerModel, name: str = "two_tower") -> None:
        self.model, self.name = model, name

    def fit(self, split: EvalSplit) -> None:  # trained by Ray Train beforehand
        pass

    @torch.no_grad()
    def scores(self, split: EvalSplit) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        users = user_vectors(self.model, split)
        items = self.model.all_item_embeddings()
        return users, items, (users @ items.T).numpy()

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        return topk_excluding(self.scores(split)[2], split.seen, k, exclude_seen)


class TwoStageRecommender:
    """Retrieval top-N candidates, plus the ``trending`` items with the most interactions in the
    ranker's trend window, re-ordered by the ranker; past them the list keeps retrieval order.
    With ``cold_start_trending``, users without history get the trending items in trend order."""

    def __init__(self, retrieval: TwoTowerModel, ranker: Ranker, candidates: int, purchase_weight: float,
                 name: str = "two_tower+ranker", trending: int = 0, cold_start_trending: bool = False) -> None:
        self.retrieval, self.ranker, self.name = TwoTowerRecommender(retrieval), ranker, name
        self.candidates, self.purchase_weight, self.trending = candidates, purchase_weight, trending
        self.cold_start_trending = cold_start_trending

    def fit(self, split: EvalSplit) -> None:
        pass

    @torch.no_grad()
    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        self.ranker.eval()
        users, items, scores = self.retrieval.scores(split)
        trend = split.recent_counts(self.ranker.spec.trend_window_days).astype(np.float32)
        trend_t = torch.as_tensor(trend)
        trending = trending_order(trend)
        n = max(k, self.candidates)
        top = topk_excluding(scores, split.seen, n, exclude_seen)
        c = min(self.candidates, n)
        cand_all = top[:, :c]
        seen = split.seen

        def unseen(row: int, ids: np.ndarray) -> np.ndarray:
            return ~np.isin(ids, seen.indices[seen.indptr[row]:seen.indptr[row + 1]]) if exclude_seen else (
                np.ones(len(ids), dtype=bool))

        if self.trending:
            cand_all = append_trending(cand_all, trending, self.trending, unseen)
        ranked = np.empty_like(cand_all)
        for lo in range(0, len(top), 512):
            rows = slice(lo, lo + 512)
            cand = torch.as_tensor(cand_all[rows])
            valid = cand >= 0
            cand_ids = cand.clamp(min=0)
            h = _history_tensors(split, rows)
            retrieval_score = (users[rows].unsqueeze(1) * items[cand_ids]).sum(-1)
            logits = self.ranker(users[rows], h["hist_items"], h["hist_gaps_s"], cand_ids, retrieval_score,
                                 trend_t[cand_ids])
            rank_score = self.ranker.score(logits, trend_t[cand_ids], self.purchase_weight, h["hist_items"], cand_ids)
            rank_score = rank_score.masked_fill(~valid, -torch.inf)
            order = rank_score.argsort(dim=1, descending=True, stable=True)
            ranked[rows] = torch.gather(cand, 1, order).numpy()
        rest = _drop_present(top[:, c:], ranked)
        out = _left_pack(np.concatenate([ranked, rest], axis=1))[:, :k]
        cold = np.flatnonzero(split.no_history) if self.cold_start_trending else []
        if len(cold):
            out[cold] = trending_first(out[cold], trending, lambda row, ids: unseen(int(cold[row]), ids))
        return out


def _drop_present(extra: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``extra`` with every id already in the same row of ``present`` replaced by -1."""
    if extra.shape[1] == 0:
        return extra
    dup = np.zeros(extra.shape, dtype=bool)
    for lo in range(0, len(extra), 512):
        rows = slice(lo, lo + 512)
        dup[rows] = (extra[rows, :, None] == present[rows, None, :]).any(-1)
    return np.where(dup | (extra < 0), -1, extra)


def _left_pack(rows: np.ndarray) -> np.ndarray:
    """Each row's ids (>= 0) moved left in order, -1 padding after them."""
    keep = rows >= 0
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(rows, order, axis=1), -1)


VALID_KS = (20, 50)  # the K of the validation Recall/NDCG reported every epoch


def retrieval_metrics(model: TwoTowerModel, split: EvalSplit, max_users: int, ks: Sequence[int],
                      exclude_seen: bool) -> dict[str, float]:
    """Validation Recall@K / NDCG@K on (a deterministic subset of) the split's users."""
    return validation_metrics(TwoTowerRecommender(model), [model], split, max_users, ks, exclude_seen)


def two_stage_system(retrieval: TwoTowerModel, ranker: Ranker, cfg: RayrecConfig) -> TwoStageRecommender:
    """Retrieval followed by ``ranker`` with the candidate counts and purchase weight of ``cfg``."""
    return TwoStageRecommender(retrieval, ranker, cfg.evaluate.candidates, cfg.ranker.purchase_weight,
                               trending=cfg.evaluate.trending_candidates,
                               cold_start_trending=cfg.ranker.cold_start == "trending")


def two_stage_metrics(retrieval: TwoTowerModel, ranker: Ranker, split: EvalSplit, cfg: RayrecConfig,
                      max_users: int, ks: Sequence[int] = VALID_KS) -> dict[str, float]:
    """Validation Recall@K / NDCG@K of retrieval followed by ``ranker``."""
    system = two_stage_system(retrieval, ranker, cfg)
    return validation_metrics(system, [retrieval, ranker], split, max_users, ks, cfg.evaluate.exclude_seen)


TREND_BOOST_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
COLLABORATIVE_BOOST_GRID = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6)
# The ranker spec's score terms fitted on validation, in the order fitted, with their grids.
BOOST_GRIDS = {"trend_boost": TREND_BOOST_GRID, "collaborative_boost": COLLABORATIVE_BOOST_GRID}


def fit_boosts(retrieval: TwoTowerModel, ranker: Ranker, split: EvalSplit, cfg: RayrecConfig,
               max_users: int) -> dict[str, dict[float, dict[str, float]]]:
    """Fits the score's boosts the config leaves null, in turn: ``trend_boost`` over ``TREND_BOOST_GRID``,
    then (a ranker with collaborative factors) ``collaborative_boost`` over ``COLLABORATIVE_BOOST_GRID``
    with the trend boost chosen. Each is set on ``ranker.spec`` to the smallest grid value whose
    validation NDCG@20 (two-stage) is within one standard error of the best value's, the standard
    error of the per-user paired difference. Returns each fitted boost's metrics per value, in the
    order fitted.

    Why not the plain argmax: each step up the trend grid hands more of the order from the user's own
    scores to the shop-wide trend, and on a small validation set the argmax follows noise there (the
    32-user tiny test shop picked 8 for about one more hit, and its storefront stopped answering clicks).
    The one-standard-error rule keeps the learned order unless the data clearly prefer the added term."""
    fixed = {name: getattr(cfg.ranker, name) for name in BOOST_GRIDS}
    if not ranker.spec.collaborative_factors:
        fixed["collaborative_boost"] = 0.0
    to_fit = {name: grid for name, grid in BOOST_GRIDS.items() if fixed[name] is None}
    if not to_fit:
        return {}
    split = _validation_users(split, max_users)
    # A boost fitted later is off while an earlier one is fitted (a fine-tuned ranker's spec holds its
    # source's boosts).
    ranker.spec = replace(ranker.spec, **dict.fromkeys(to_fit, 0.0))
    fits: dict[str, dict[float, dict[str, float]]] = {}
    for name, grid in to_fit.items():
        fit, per_user = {}, {}
        for boost in grid:
            ranker.spec = replace(ranker.spec, **{name: boost})
            top = _recommend(two_stage_system(retrieval, ranker, cfg), [retrieval, ranker], split, max(VALID_KS),
                             cfg.evaluate.exclude_seen)
            fit[boost] = _metrics(top, split, VALID_KS)
            per_user[boost] = user_ndcg(top, split.targets, 20)
        ranker.spec = replace(ranker.spec, **{name: smallest_within_one_se(per_user)})
        fits[name] = fit
    return fits


def smallest_within_one_se(per_user: dict[float, np.ndarray]) -> float:
    """The smallest key whose per-user values (the same users, in the same order, for every key) trail
    the best mean by at most one standard error of the paired per-user difference."""
    best = max(sorted(per_user), key=lambda key: per_user[key].mean())
    for key in sorted(per_user):
        deficit = per_user[best] - per_user[key]
        se = float(deficit.std(ddof=1)) / np.sqrt(len(deficit)) if len(deficit) > 1 else 0.0
        if float(deficit.mean()) <= se:
            return key
    return best


def validation_metrics(system: TwoTowerRecommender | TwoStageRecommender, models: Sequence[torch.nn.Module],
                       split: EvalSplit, max_users: int, ks: Sequence[int], exclude_seen: bool) -> dict[str, float]:
    split = _validation_users(split, max_users)
    return _metrics(_recommend(system, models, split, max(ks), exclude_seen), split, ks)


def _validation_users(split: EvalSplit, max_users: int) -> EvalSplit:
    """A deterministic subset of at most ``max_users`` users, evenly spread over the split."""
    if len(split.users) > max_users:
        split = subset_users(split, np.linspace(0, len(split.users) - 1, max_users).astype(int))
    return split


def choose_and_judge(split: EvalSplit) -> tuple[EvalSplit, EvalSplit]:
    """``split`` cut into two disjoint halves of its users, (choose, judge): settings are chosen on the
    first and the result is scored on the second, never on the users that chose it. The cut is by
    ``in_judge_half`` of each ``user_idx``, so a user falls in the same half on every run, in every
    subset of the split, whatever its other users."""
    judge = in_judge_half(split.users)
    if judge.all() or not judge.any():
        raise ValueError(f"{len(split.users)} {split.split} user(s) cannot be cut into two non-empty halves")
    return subset_users(split, np.flatnonzero(~judge)), subset_users(split, np.flatnonzero(judge))


def in_judge_half(users: np.ndarray) -> np.ndarray:
    """bool per ``user_idx``: the top bit of its Fibonacci hash (id x 2^64/golden ratio, mod 2^64), true for
    about half of any run of consecutive ids."""
    return ((users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)) == 1


def _recommend(system: TwoTowerRecommender | TwoStageRecommender, models: Sequence[torch.nn.Module],
               split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
    """``system``'s top ``k`` for the users of ``split``, the models' train/eval modes left as they were."""
    modes = [m.training for m in models]
    top = system.recommend(split, k, exclude_seen)
    for m, mode in zip(models, modes):
        m.train(mode)
    return top


def _metrics(top: np.ndarray, split: EvalSplit, ks: Sequence[int]) -> dict[str, float]:
    m = ranking_metrics(top, split.targets, ks=ks)
    return {f"valid_{name}": float(m[name]) for k in ks for name in (f"recall@{k}", f"ndcg@{k}")}


def subset_users(split: EvalSplit, rows: np.ndarray) -> EvalSplit:
    return replace(split, users=split.users[rows], history_items=split.history_items[rows],
                   history_types=split.history_types[rows], history_gaps=split.history_gaps[rows],
                   seen=split.seen[rows], targets=split.targets[rows])
