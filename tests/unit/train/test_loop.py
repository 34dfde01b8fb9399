"""The training loops' learning-rate schedule, trending negatives and the serving-pool filter."""

from __future__ import annotations

import math

import pytest
import torch

from rayrec.config import TrainConfig
from rayrec.train.loop import _in_serving_pool, _retrieval_top, _with_trending_negatives, set_scheduled_lr


def _lr_curve(t: TrainConfig, epochs: int, steps: int | None) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    out = []
    for epoch in range(epochs):
        for step in range(steps or 3):
            set_scheduled_lr(opt, t, 0.01, epochs, epoch, step, steps)
            out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_decays_from_lr_to_its_floor_and_constant_stays():
    curve = _lr_curve(TrainConfig(lr_schedule="cosine", lr_floor=0.1), epochs=2, steps=5)
    assert curve[0] == pytest.approx(0.01) and curve[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(curve, curve[1:]))
    assert curve[4] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))  # position, not history
    assert set(_lr_curve(TrainConfig(lr_schedule="constant"), epochs=2, steps=None)) == {0.01}


def test_cosine_without_the_steps_per_epoch_is_refused():
    with pytest.raises(ValueError, match="steps per epoch"):
        _lr_curve(TrainConfig(lr_schedule="cosine"), epochs=1, steps=None)


def test_trending_negatives_come_from_each_positives_own_day_pool_and_never_its_item():
    torch.manual_seed(0)
    batch = {"item_idx": torch.tensor([5, 7, 9, 4]), "label_click": torch.tensor([1, 1, 0, 1])}
    cand, labels = batch["item_idx"].unsqueeze(1), torch.tensor([[[1.0, 0.0]], [[1, 1]], [[0, 0]], [[1, 0]]])
    pools = torch.tensor([[5, 6, 0], [8, 3, 7], [2, 3, 0], [0, 0, 0]])
    out, out_labels = _with_trending_negatives(batch, cand, labels, pools, 50)
    assert out.shape == (4, 51) and out_labels.shape == (4, 51, 2)
    assert out[:, 0].tolist() == [5, 7, 9, 4] and out_labels[:, 0].tolist() == labels[:, 0].tolist()
    assert (out_labels[:, 1:] == 0).all()
    assert set(out[0, 1:].tolist()) == {0, 6}  # 0: the draws of its own item 5, masked as padding
    assert set(out[1, 1:].tolist()) == {0, 8, 3}
    assert set(out[2, 1:].tolist()) == {0}  # a negative example gets no negatives
    assert set(out[3, 1:].tolist()) == {0}  # a day nothing trended


def test_serving_pool_keeps_positives_a_request_would_rank_and_no_negative_rows():
    # items 0/1 are padding/unknown; user 0 scores items 2 > 3 > 4 > 5 > 6, user 1 the reverse order
    item_vecs = torch.tensor([[9.0], [9.0], [5.0], [4.0], [3.0], [2.0], [1.0]])
    user = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [1.0]])
    batch = {"item_idx": torch.tensor([3, 3, 6, 6, 2]), "label_click": torch.tensor([1, 1, 1, 1, 0])}
    pools = torch.tensor([[0, 0], [0, 0], [0, 0], [6, 0], [0, 0]])  # row 3's day had item 6 trending
    top2 = _retrieval_top(user, item_vecs, 2)
    kept = _in_serving_pool(batch, top2, pools)
    # row 0: 3 is in user 0's top 2 (2, 3); row 1: user 1's top 2 are 6, 5; row 2: 6 is neither retrieved
    # nor trending; row 3: trending that day; row 4: a negative row, whatever its item
    assert kept.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert _in_serving_pool(batch, top2, None).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_the_ranker_spec_carries_every_ranker_setting_it_shares_with_the_config():
    from dataclasses import fields

    from rayrec.config import load_config
    from rayrec.models.ranker import RankerSpec
    from rayrec.train.loop import ModelContext, ranker_spec

    cfg = load_config(None, ["ranker.dim=8", "ranker.cross_layers=3", "ranker.cross_rank=7",
                             "ranker.deep_layers=[32]", "ranker.trend_window_days=3.5", "ranker.title_affinity=false",
                             "ranker.category_price=false", "ranker.collaborative_factors=16",
                             "ranker.trend_boost=1.5", "model.dim=24"])
    manifest = {"vocab_sizes": {"items": 10, "categories": 4, "brands": 3}, "price_bucket_edges": [1.0, 2.0]}
    spec = ranker_spec(ModelContext(cfg=cfg, manifest=manifest, items=None, valid=None))  # type: ignore[arg-type]
    shared = {f.name for f in fields(RankerSpec)} & set(type(cfg.ranker).model_fields)
    assert shared >= {"dim", "cross_layers", "cross_rank", "deep_layers", "trend_window_days", "trend_boost",
                      "title_affinity", "category_price", "collaborative_factors", "collaborative_boost"}
    assert {n: getattr(spec, n) for n in shared - {"collaborative_boost"}} == \
        {n: getattr(cfg.ranker, n) for n in shared - {"collaborative_boost"}}
    assert spec.collaborative_boost == 0.0  # null in the config: fitted after training, starts at 0
    assert (spec.n_items, spec.n_price_buckets, spec.user_dim) == (10, 4, 24)
