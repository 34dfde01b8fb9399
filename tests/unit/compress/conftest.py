"""Fixtures for the compression tests: the tiny item table of the model tests and a tiny Ranker."""

from __future__ import annotations

import pytest
import torch

from rayrec.models.ranker import Ranker, RankerSpec
from rayrec.models.two_tower import TwoTowerSpec
from tests.unit.models.conftest import N_ITEMS, items  # noqa: F401  (re-exported fixture)

SPEC = RankerSpec(n_items=N_ITEMS, n_categories=20, n_brands=8, n_price_buckets=6, user_dim=16, dim=8,
                  cross_layers=2, cross_rank=8, deep_layers=[32, 16], title_affinity=True, category_price=True)
TT_SPEC = TwoTowerSpec(n_items=N_ITEMS, n_users=10, n_categories=20, n_brands=8, n_price_buckets=6, n_tokens=40,
                       title_tokens=4, history_length=5, dim=16, hidden=32, heads=2)


@pytest.fixture
def ranker(items) -> Ranker:  # noqa: F811
    torch.manual_seed(0)
    return Ranker(SPEC, items).eval()


def batch_inputs(batch: int = 6, candidates: int = 7, history: int = 5, seed: int = 1):
    """Random (user, history, gaps, candidates, retrieval scores, trend counts) for Ranker.forward."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(2, N_ITEMS, (batch, history), generator=g)
    hist[0, :2] = 0  # a partial history
    gaps = torch.rand(batch, history, generator=g) * 1e5
    cand = torch.randint(2, N_ITEMS, (batch, candidates), generator=g)
    cand[1, :2] = hist[1, -2:]  # some candidates the user touched
    return (torch.randn(batch, SPEC.user_dim, generator=g), hist, gaps, cand,
            torch.rand(batch, candidates, generator=g) * 2 - 1,
            torch.randint(0, 60, (batch, candidates), generator=g).float())
