from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from rayrec.models.losses import multi_task_bce
from rayrec.models.ranker import N_DENSE, Ranker, RankerSpec, inference_graph, leaf_relative, title_words
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
    assert model.score(logits, torch.zeros(2, 3), 0.5, hist, cand).shape == (2, 3)


def test_trend_boost_adds_the_log_trend_count_to_the_score(items):

    model = Ranker(SPEC, items)
    logits = torch.randn(1, 3, 2)
    counts = torch.tensor([[0.0, 4, 60]])
    hist, cand = torch.tensor([[0, 3, 4]]), torch.tensor([[5, 6, 7]])
    plain = torch.sigmoid(logits[..., 0]) + 0.5 * torch.sigmoid(logits[..., 1])
    assert torch.equal(model.score(logits, counts, 0.5, hist, cand), plain)  # trend_boost 0: the heads alone
    model.spec = replace(SPEC, trend_boost=2.0)
    boosted = model.score(logits, counts, 0.5, hist, cand)
    assert torch.allclose(boosted - plain, 2.0 * torch.log1p(counts) / model.pop_scale)


def test_affinities_count_what_the_history_says(items):
    model = Ranker(SPEC, items)
    hist = torch.tensor([[0, 3, 3, 4]])
    gaps = torch.tensor([[0, 100.0, 10.0, 1.0]])
    feats = model.affinities(hist, gaps, torch.tensor([[3, 25]]))
    assert feats.shape == (1, 2, N_DENSE - 2) and SPEC.n_dense == N_DENSE
    same_item, recency = feats[0, :, 1], feats[0, :, 2]
    assert torch.isclose(same_item[0], torch.tensor(2 / 3))  # item 3 twice in 3 real history slots
    assert same_item[1] == 0 and recency[0] < recency[1]  # touched 10 s ago vs never


def test_category_brand_and_price_affinities_by_hand(items):
    # item i >= 2: top category 2 + (i-2) % 3, leaf 11 + (i-2) % 9, brand 2 + (i-2) % 5
    items.brand[5] = items.brand[20] = 0  # unknown brands: equal, yet never "the same brand"
    items.price[11] = items.price[7] = np.nan
    model = Ranker(SPEC, items)
    hist = torch.tensor([[0, 2, 11, 5]])  # a padding slot, then leaves 11, 11, 14, all top category 2
    feats = model.affinities(hist, torch.tensor([[0, 3.0, 2.0, 1.0]]), torch.tensor([[20, 12, 8, 7]]))
    leaf, top, brand = feats[0, :, 3], feats[0, :, 4], feats[0, :, 5]
    assert torch.allclose(leaf, torch.tensor([2 / 3, 0, 0, 0])) and torch.equal(top, torch.tensor([1.0, 0, 1, 0]))
    assert torch.allclose(brand, torch.tensor([0, 1 / 3, 0, 1 / 3]))  # 12 and 7 have brand 2, as item 2 has
    rel_price, price_known, n_hist = feats[0, :, 6], feats[0, :, 7], feats[0, :, 8]
    user_level = (np.log(items.price[2]) + np.log(items.price[5])) / 2  # item 11's price is unknown
    expected = np.clip(np.log(items.price[[20, 12, 8]]) - user_level, -3, 3)
    assert torch.allclose(rel_price[:3], torch.tensor(expected, dtype=torch.float32))
    assert rel_price[3] == 0 and price_known.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert torch.allclose(n_hist, torch.tensor(3 / 4))
    # item 1 has the padding item's categories (0): padding slots still match nothing
    no_history = model.affinities(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4), torch.tensor([[20, 1]]))
    assert no_history[0, :, 1:8].tolist() == [[0, 1, 0, 0, 0, 0, 0]] * 2  # touched "never", no price level


def test_affinities_of_a_batch_are_each_request_alone(items):
    # the leaf/top/brand counts are a histogram per request: one request's history must not reach another's
    model = Ranker(SPEC, items)
    hist = torch.tensor([[0, 2, 11, 5], [7, 7, 8, 29], [0, 0, 0, 0]])
    gaps = torch.tensor([[0, 3.0, 2.0, 1.0], [9.0, 5.0, 2.0, 1.0], [0, 0, 0, 0]])
    cand = torch.tensor([[20, 12, 8, 7], [7, 2, 11, 16], [2, 7, 8, 0]])
    batch = model.affinities(hist, gaps, cand)
    for row in range(3):
        alone = model.affinities(hist[row:row + 1], gaps[row:row + 1], cand[row:row + 1])
        assert torch.equal(batch[row:row + 1], alone)
    assert batch[1, 0, 1] == 0.5 and batch[2].abs().sum() > 0  # item 7 is half of row 1's history


def test_leaf_relative_prices_subtract_the_mean_log_price_of_the_priced_items_of_the_leaf():
    log_price = torch.tensor([0.0, 1.0, 3.0, 9.0, 2.0, 5.0])
    known = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # item 3's price is unknown: it sets no level
    leaf = torch.tensor([0, 1, 1, 1, 2, 2])
    assert leaf_relative(log_price, known, leaf).tolist() == [0.0, -1.0, 1.0, 0.0, -1.5, 1.5]


def test_category_price_compares_the_candidate_and_the_history_within_their_categories(items):
    items.price[7] = np.nan
    model = Ranker(replace(SPEC, category_price=True), items)
    leaf = items.categories[:, 2]
    logp = np.log(items.price)

    def within_leaf(i: int) -> float:  # log price minus the mean of its leaf's priced items
        same = (leaf == leaf[i]) & np.isfinite(logp)
        return logp[i] - logp[same].mean()

    hist = torch.tensor([[0, 2, 7, 5]])  # item 7 has no price: the user's level is 2's and 5's
    feats = model.affinities(hist, torch.ones(1, 4), torch.tensor([[20, 7]]))[..., -1]  # category_price comes last
    expected = np.clip(within_leaf(20) - (within_leaf(2) + within_leaf(5)) / 2, -3, 3)
    assert feats[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert feats[0, 1] == 0  # unknown price
    no_history = torch.zeros(1, 4, dtype=torch.long)
    assert model.affinities(no_history, torch.ones(1, 4), torch.tensor([[20]]))[0, 0, -1] == 0
    logits = model(torch.randn(1, SPEC.user_dim), hist, torch.ones(1, 4), torch.tensor([[20, 7]]),
                   torch.zeros(1, 2), torch.zeros(1, 2))
    assert model.spec.n_dense == N_DENSE + 1 and logits.shape == (1, 2, 2)


def test_title_words_keep_shared_words_once_weighted_by_rarity():
    # 4 titled items; word 5 in every title, 6 in two, 7 twice in one title, 9 in one title only
    title = torch.tensor([[0, 0, 0], [0, 0, 0], [5, 6, 0], [7, 5, 7], [5, 6, 9], [5, 0, 0], [0, 0, 0]])
    words, idf = title_words(title)
    bags = words.sort(-1).values.tolist()  # a title is a bag of words: the order within it is not kept
    assert bags == [[0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 0, 1], [0, 1, 2], [0, 0, 1], [0, 0, 0]]
    assert idf.shape == (3,) and idf[0] == 0  # padding, then 5 and 6 renumbered 1 and 2; 7 and 9 are one title's
    assert torch.isclose(idf[1], torch.tensor(0.0))  # in every title: log(4 / 5) floored at 0
    assert torch.isclose(idf[2], torch.log(torch.tensor(4 / 3)))


def test_title_affinities_are_the_weighted_share_of_the_title_found_in_history(items):
    from dataclasses import replace

    titled = replace(items, title=np.zeros_like(items.title))
    # rows 8.. have no title; item 5 repeats a word, which counts once; 3 is one title's word only
    titled.title[2:8] = [[8, 9, 0, 0], [8, 0, 0, 0], [9, 3, 0, 0], [4, 4, 8, 0], [4, 9, 0, 0], [8, 0, 0, 0]]
    model = Ranker(replace(SPEC, title_affinity=True), titled)
    idf = title_words(torch.tensor(titled.title, dtype=torch.long))[1]
    w = dict(zip((4, 8, 9), idf[1:].tolist()))  # the shared words, renumbered in order
    hist = torch.tensor([[0, 3, 4, 3]])  # three real items with the words {8}, {9, 3}, {8}
    feats = model.affinities(hist, torch.ones(1, 4), torch.tensor([[2, 5, 8, 9]]))[..., N_DENSE - 2:]
    assert feats.shape == (1, 4, 2)
    # Item 2 ({8, 9}): both words are somewhere in the history; 8 in two of the three items, 9 in one.
    expected = [1.0, (2 * w[8] + w[9]) / (w[8] + w[9]) / 3]
    assert torch.allclose(feats[0, 0], torch.tensor(expected))
    # Item 5 ({4, 8}): only 8 is in the history, in two items.
    expected = [w[8] / (w[4] + w[8]), 2 * w[8] / (w[4] + w[8]) / 3]
    assert torch.allclose(feats[0, 1], torch.tensor(expected))
    assert torch.equal(feats[0, 2:], torch.zeros(2, 2))  # no title at all
    no_history = model.affinities(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), torch.tensor([[2]]))
    assert torch.equal(no_history[..., N_DENSE - 2:], torch.zeros(1, 1, 2))


def test_title_affinity_adds_two_inputs_and_old_specs_load_without_them(items):
    from dataclasses import replace

    spec = replace(SPEC, title_affinity=True)
    assert spec.n_dense == N_DENSE + 2 and SPEC.n_dense == N_DENSE
    assert Ranker(spec, items).norm.weight.shape[0] == Ranker(SPEC, items).norm.weight.shape[0] + 2
    saved_before = {k: v for k, v in SPEC.to_dict().items() if k != "title_affinity"}  # a bundle from before
    assert RankerSpec(**saved_before).title_affinity is False


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


def test_inference_graph_scores_like_the_model_and_leaves_it_trainable(items):
    model = Ranker(replace(SPEC, title_affinity=True, category_price=True), items)
    hist = torch.tensor([[0, 3, 4, 3], [5, 6, 7, 8]])
    inputs = (torch.randn(2, SPEC.user_dim), hist, torch.rand(2, 4) * 1e5, torch.tensor([[3, 9, 10], [2, 5, 6]]),
              torch.rand(2, 3), torch.tensor([[0.0, 3, 50], [1, 0, 0]]))
    graph = inference_graph(model)  # reads every candidate's embeddings from one frozen table
    with torch.no_grad():
        assert torch.allclose(graph(*inputs), model(*inputs), atol=1e-6)
    assert model.frozen_candidates is None  # training goes on reading the embeddings themselves
    model.train()
    model(*inputs).sum().backward()
    assert model.item_emb.weight.grad is not None and model.item_emb.weight.grad.abs().sum() > 0
