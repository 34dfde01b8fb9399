from __future__ import annotations

import torch

from rayrec.models.losses import multi_task_bce
from rayrec.models.ranker import N_DENSE, Ranker, RankerSpec
from tests.unit.models.conftest import N_ITEMS

SPEC = RankerSpec(n_items=N_ITEMS, n_categories=20, n_brands=8, n_price_buckets=6, user_dim=16, dim=8,
                  cross_layers=2, cross_rank=4, deep_layers=[32, 16])


def test_scores_every_candidate_with_two_heads(items):
    model = Ranker(SPEC, items)
    hist = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    gaps = torch.tensor([[0, 0, 60.0, 5.0], [9, 8, 7, 6.0]])
    cand = torch.tensor([[3, 9, 10], [2, 5, 6]])
    logits = model(torch.randn(2, 16), hist, gaps, cand, torch.rand(2, 3), torch.tensor([[0.0, 3, 50], [1, 0, 0]]))
    assert logits.shape == (2, 3, 2) and torch.isfinite(logits).all()
    assert model.score(logits, torch.zeros(2, 3), 0.5).shape == (2, 3)


def test_trend_boost_adds_the_log_trend_count_to_the_score(items):
    from dataclasses import replace

    model = Ranker(SPEC, items)
    logits = torch.randn(1, 3, 2)
    counts = torch.tensor([[0.0, 4, 60]])
    plain = torch.sigmoid(logits[..., 0]) + 0.5 * torch.sigmoid(logits[..., 1])
    assert torch.equal(model.score(logits, counts, 0.5), plain)  # trend_boost 0: the heads alone
    model.spec = replace(SPEC, trend_boost=2.0)
    boosted = model.score(logits, counts, 0.5)
    assert torch.allclose(boosted - plain, 2.0 * torch.log1p(counts) / model.pop_scale)


def test_affinities_count_what_the_history_says(items):
    model = Ranker(SPEC, items)
    hist = torch.tensor([[0, 3, 3, 4]])
    gaps = torch.tensor([[0, 100.0, 10.0, 1.0]])
    feats = model.affinities(hist, gaps, torch.tensor([[3, 25]]))
    assert feats.shape == (1, 2, N_DENSE - 2)
    same_item, recency = feats[0, :, 1], feats[0, :, 2]
    assert torch.isclose(same_item[0], torch.tensor(2 / 3))  # item 3 twice in 3 real history slots
    assert same_item[1] == 0 and recency[0] < recency[1]  # touched 10 s ago vs never


def test_ranker_learns_a_separable_signal(items):
    torch.manual_seed(0)
    model = Ranker(SPEC, items)
    hist = torch.randint(2, N_ITEMS, (128, 4))
    cand = torch.randint(2, N_ITEMS, (128, 1))
    cand[:64, 0] = hist[:64, -1]  # positives: the candidate is in the history
    labels = torch.zeros(128, 1, 2)
    labels[:64, 0, 0] = 1
    user = torch.randn(128, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        logits = model(user, hist, torch.ones(128, 4), cand, torch.zeros(128, 1), torch.zeros(128, 1))
        loss = multi_task_bce(logits.reshape(-1, 2), labels.reshape(-1, 2))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_ranker_learns_from_the_trend_counts_alone(items):
    """Same user, history and candidates; only the trend input tells the clicked items apart."""
    torch.manual_seed(0)
    model = Ranker(SPEC, items)
    cand = torch.randint(2, N_ITEMS, (256, 1))
    clicked = torch.rand(256) < 0.5
    trend = torch.where(clicked, 40.0, 1.0).unsqueeze(1)
    labels = torch.zeros(256, 1, 2)
    labels[clicked, 0, 0] = 1
    user, hist, gaps = torch.zeros(256, 16), torch.zeros(256, 4, dtype=torch.long), torch.zeros(256, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = multi_task_bce(model(user, hist, gaps, cand, torch.zeros(256, 1), trend).reshape(-1, 2),
                              labels.reshape(-1, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(model(user, hist, gaps, cand, torch.zeros(256, 1), trend))[:, 0, 0]
    assert p[clicked].min() > p[~clicked].max()
