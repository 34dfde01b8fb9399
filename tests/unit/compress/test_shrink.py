from __future__ import annotations

import pytest
import torch

from rayrec.compress.measure import parameter_count
from rayrec.compress.shrink import ShrinkRatios, shrink_ranker, shrink_two_tower, structured_record
from rayrec.models.ranker import Ranker, RankerSpec
from rayrec.models.two_tower import TwoTowerModel, TwoTowerSpec
from tests.unit.compress.conftest import SPEC, TT_SPEC, batch_inputs
from tests.unit.models.conftest import N_ITEMS

def test_ratio_zero_is_an_exact_copy_that_loads_through_the_normal_path(ranker, items):
    small = shrink_ranker(ranker, ShrinkRatios(), items)
    x = batch_inputs()
    with torch.no_grad():
        assert torch.equal(small(*x), ranker(*x))
    assert small is not ranker and small.spec == ranker.spec
    reloaded = Ranker(RankerSpec(**small.spec.to_dict()), items)
    reloaded.load_state_dict(small.state_dict())  # strict: the shrunk spec describes every tensor


def test_shrinking_really_shrinks_tensors_and_parameters(ranker, items):
    small = shrink_ranker(ranker, ShrinkRatios(deep=0.5, cross_rank=0.5, embedding_dim=0.5), items)
    assert (small.spec.dim, small.spec.cross_rank, small.spec.deep_layers) == (4, 4, [16, 8])
    width = SPEC.user_dim + 4 * 4 + SPEC.n_dense
    assert small.item_emb.weight.shape == (N_ITEMS, 4) and small.price_emb.weight.shape == (6, 4)
    assert small.norm.weight.shape == (width,)
    assert small.cross[0].down.weight.shape == (4, width) and small.cross[1].up.weight.shape == (width, 4)
    assert small.deep[0].weight.shape == (16, width) and small.deep[2].weight.shape == (8, 16)
    assert small.head.weight.shape == (2, 8)
    # Each part shrinks by about its ratio; the untouched user/dense columns keep the total above half.
    assert small.item_emb.weight.numel() == ranker.item_emb.weight.numel() // 2
    assert small.deep[2].weight.numel() == ranker.deep[2].weight.numel() // 4  # both sides halved
    before, after = parameter_count(ranker)["total"], parameter_count(small)["total"]
    assert 0.3 * before < after < 0.6 * before
    x = batch_inputs()
    with torch.no_grad():
        assert small(*x).shape == ranker(*x).shape and torch.isfinite(small(*x)).all()


def test_dead_units_are_the_ones_removed_and_removing_them_changes_nothing(ranker, items):
    with torch.no_grad():
        for linear in (ranker.deep[0], ranker.deep[2]):
            linear.weight[::2] = 0  # half of each layer's units never fire (ReLU(0) = 0)
            linear.bias[::2] = 0
        for layer in ranker.cross:
            layer.down.weight[1::2] = 0  # half of each cross layer's rank carries nothing
    small = shrink_ranker(ranker, ShrinkRatios(deep=0.5, cross_rank=0.5), items)
    assert small.spec.deep_layers == [16, 8] and small.spec.cross_rank == 4
    assert torch.equal(small.deep[0].bias, ranker.deep[0].bias[1::2])  # the live units, in order
    x = batch_inputs()
    with torch.no_grad():
        assert torch.allclose(small(*x), ranker(*x), atol=1e-6)


def test_embedding_columns_are_dropped_together_across_tables(ranker, items):
    with torch.no_grad():
        for table in (ranker.item_emb, ranker.cat_emb, ranker.brand_emb, ranker.price_emb):
            table.weight[:, [1, 6]] = 0
    small = shrink_ranker(ranker, ShrinkRatios(embedding_dim=0.25), items)
    kept = [0, 2, 3, 4, 5, 7]
    assert torch.equal(small.brand_emb.weight, ranker.brand_emb.weight[:, kept])
    user_cols = torch.arange(SPEC.user_dim)
    assert torch.equal(small.norm.weight[user_cols], ranker.norm.weight[user_cols])


def test_removing_an_input_group_drops_its_columns_and_the_work_computing_them(ranker, items):
    small = shrink_ranker(ranker, ShrinkRatios(inputs=("title_affinity",)), items)
    assert not small.spec.title_affinity and small.spec.category_price
    assert not hasattr(small, "title_share")  # the per-request title histogram is gone, not just unread
    names = SPEC.dense_inputs
    assert small.spec.dense_inputs == tuple(n for n in names if n not in ("title_anywhere", "title_mean"))
    start = SPEC.user_dim + 4 * SPEC.dim
    kept = [i for i in range(start + len(names)) if i < start or names[i - start] in small.spec.dense_inputs]
    assert torch.equal(small.norm.weight, ranker.norm.weight[kept])
    assert torch.equal(small.cross[1].down.weight, ranker.cross[1].down.weight[:, kept])
    assert torch.equal(small.cross[0].up.bias, ranker.cross[0].up.bias[kept])
    assert torch.equal(small.deep[0].weight, ranker.deep[0].weight[:, kept])
    # The leaf-relative price after the removed pair still reads its own column.
    x = batch_inputs()
    user, hist, gaps, cand = x[:4]
    with torch.no_grad():
        assert torch.equal(small.affinities(hist, gaps, cand)[..., -1], ranker.affinities(hist, gaps, cand)[..., -1])
        assert small(*x).shape == ranker(*x).shape


def test_every_removable_input_group_has_its_spec_flag_and_config_switch():
    from dataclasses import fields

    from rayrec.config import CompressConfig
    from rayrec.models.ranker import OPTIONAL_INPUTS

    spec_flags = {f.name for f in fields(RankerSpec)}
    for group in OPTIONAL_INPUTS:  # compress_ranker and RankerSpec.dense_inputs read them by these names
        assert group in spec_flags and f"drop_{group}" in CompressConfig.model_fields


def test_ratios_are_validated():
    with pytest.raises(ValueError, match="deep"):
        ShrinkRatios(deep=1.0)
    with pytest.raises(ValueError, match="cross_rank"):
        ShrinkRatios(cross_rank=-0.1)
    with pytest.raises(ValueError, match="removable inputs"):
        ShrinkRatios(inputs=("trend",))


def test_structured_record_names_ratios_and_both_specs(ranker, items):
    ratios = ShrinkRatios(deep=0.25)
    small = shrink_ranker(ranker, ratios, items)
    record = structured_record(ranker, ratios, small)
    assert record["ratios"]["deep"] == 0.25 and record["original_spec"]["deep_layers"] == [32, 16]
    assert record["spec"]["deep_layers"] == [24, 12]


def _two_tower(items) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(TT_SPEC, items).eval()


def _history():
    g = torch.Generator().manual_seed(0)
    hist = torch.randint(2, N_ITEMS, (4, 5), generator=g)
    hist[0, :3] = 0
    types = torch.where(hist > 0, torch.randint(1, 5, hist.shape, generator=g), 0)
    gaps = torch.where(hist > 0, torch.randint(1, 20, hist.shape, generator=g), 0)
    return hist, types, gaps


def test_two_tower_ratio_zero_is_exact_and_half_halves_every_hidden_mlp(items):
    model = _two_tower(items)
    same = shrink_two_tower(model, 0.0, items)
    h = _history()
    with torch.no_grad():
        for a, b in zip(same(*h, None, torch.arange(2, 6)), model(*h, None, torch.arange(2, 6))):
            assert torch.equal(a, b)
    small = shrink_two_tower(model, 0.5, items)
    assert small.spec.hidden == 16
    assert small.item_tower.mlp[0].weight.shape == (16, 5 * 16) and small.user_tower.out[2].weight.shape == (16, 16)
    assert small.user_tower.encoder.linear1.weight.shape == (16, 16)
    TwoTowerModel(TwoTowerSpec(**small.spec.to_dict()), items).load_state_dict(small.state_dict())
    assert small.all_item_embeddings().shape == (N_ITEMS, 16)
