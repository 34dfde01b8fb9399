from __future__ import annotations

import pytest
import torch
from torch import nn

from rayrec.compress.prune import (
    GradualMagnitudePruner,
    cubic_sparsity,
    is_reparametrised,
    make_permanent,
    ranker_prune_targets,
    sparsity_report,
)
from rayrec.models.losses import multi_task_bce
from rayrec.models.ranker import Ranker
from tests.unit.compress.conftest import SPEC, batch_inputs


def test_cubic_schedule_rises_fast_then_flattens_and_ends_at_the_target():
    s = [cubic_sparsity(t, 0.8, 100) for t in range(101)]
    assert s[0] == 0.0 and s[100] == pytest.approx(0.8)
    assert s[50] == pytest.approx(0.8 * (1 - 0.5**3))
    assert all(b >= a for a, b in zip(s, s[1:]))
    assert s[10] - s[0] > s[100] - s[90]  # most of the pruning happens early
    assert cubic_sparsity(5, 0.8, 100, begin_step=10) == 0.0 and cubic_sparsity(500, 0.8, 100) == pytest.approx(0.8)


def test_targets_are_embeddings_cross_and_deep_but_not_the_head(ranker):
    names = set(ranker_prune_targets(ranker))
    assert {"item_emb", "price_emb", "cross.0.down", "cross.1.up", "deep.0", "deep.2"} <= names
    assert "head" not in names and "norm" not in names


def _train_step(model: Ranker, opt: torch.optim.Optimizer, x) -> None:
    labels = torch.zeros(*x[3].shape, 2)
    labels[:, 0, 0] = 1
    loss = multi_task_bce(model(*x).reshape(-1, 2), labels.reshape(-1, 2))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_pruning_follows_the_schedule_reaches_the_target_and_never_revives_a_weight(ranker):
    targets = ranker_prune_targets(ranker)
    pruner = GradualMagnitudePruner(targets, final_sparsity=0.7, total_steps=20, every=2)
    opt = torch.optim.AdamW(ranker.parameters(), lr=1e-2)  # created after the pruner, as a loop would
    x = batch_inputs()
    ranker.train()
    zeros_before = None
    for step in range(1, 21):
        _train_step(ranker, opt, x)
        pruner.step()
        zeros = {n: (m.weight_mask == 0) for n, m in targets.items()}
        if zeros_before is not None:
            assert all((zeros[n] >= zeros_before[n]).all() for n in zeros)  # masks only grow
        zeros_before = zeros
        if step == 10:
            mid = pruner.report()["deep.0"]
            assert mid == pytest.approx(cubic_sparsity(10, 0.7, 20), abs=1e-3)
    report = pruner.report()
    for name, module in targets.items():
        assert report[name] == pytest.approx(0.7, abs=1 / module.weight_orig.numel() + 1e-9)
    summary = pruner.summary()
    assert summary["kind"] == "unstructured" and summary["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert set(summary["per_module"]) == set(targets)


def test_make_permanent_leaves_plain_tensors_with_the_zeros(ranker, items):
    targets = ranker_prune_targets(ranker)
    pruner = GradualMagnitudePruner(targets, final_sparsity=0.5, total_steps=3)
    for _ in range(3):
        pruner.step()
    x = batch_inputs()
    with torch.no_grad():
        masked = ranker(*x)
    assert is_reparametrised(ranker)
    make_permanent(ranker)
    assert not is_reparametrised(ranker)
    for module in targets.values():
        assert isinstance(module.weight, nn.Parameter)
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
        assert not module._forward_pre_hooks
    assert set(ranker.state_dict()) == set(Ranker(SPEC, items).state_dict())
    assert sparsity_report(targets)["overall"] == pytest.approx(0.5, abs=1e-3)
    with torch.no_grad():
        assert torch.equal(ranker(*x), masked)


def test_global_scope_hits_the_overall_target_and_prunes_small_layers_unevenly(ranker):
    targets = ranker_prune_targets(ranker)
    pruner = GradualMagnitudePruner(targets, final_sparsity=0.6, total_steps=4, scope="global")
    for _ in range(4):
        pruner.step()
    report = pruner.report()
    assert report["overall"] == pytest.approx(0.6, abs=1e-3)
    # N(0, 1) embeddings dwarf the Linear layers' ±1/sqrt(fan_in) init: a global threshold prunes Linears first.
    assert report["deep.0"] > report["item_emb"]


def test_bad_arguments_are_refused(ranker):
    with pytest.raises(ValueError):
        GradualMagnitudePruner(ranker_prune_targets(ranker), final_sparsity=1.0, total_steps=10)
    with pytest.raises(ValueError):
        GradualMagnitudePruner(ranker_prune_targets(ranker), final_sparsity=0.5, total_steps=0)
