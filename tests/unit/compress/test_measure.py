from __future__ import annotations

from dataclasses import replace

import torch

from rayrec.compress.measure import (
    interleaved_latency,
    model_size_bytes,
    parameter_count,
    random_request,
    scoring_latency,
)
from rayrec.compress.prune import GradualMagnitudePruner, make_permanent, ranker_prune_targets
from rayrec.compress.quantize import quantize_int8
from rayrec.compress.shrink import ShrinkRatios, shrink_ranker
from rayrec.models.ranker import Ranker
from tests.unit.compress.conftest import SPEC


def test_parameter_count_sees_masks_and_packed_int8_weights(ranker):
    total = sum(p.numel() for p in ranker.parameters())
    assert parameter_count(ranker)["total"] == total
    assert parameter_count(quantize_int8(ranker))["total"] == total  # packed weights are not Parameters
    pruner = GradualMagnitudePruner(ranker_prune_targets(ranker), final_sparsity=0.5, total_steps=1)
    pruner.step()
    masked = parameter_count(ranker)
    assert masked["total"] == total and masked["nonzero"] < 0.6 * total
    assert parameter_count(make_permanent(ranker)) == masked


def test_size_drops_with_int8_and_with_shrinking_but_not_with_zeros(items):
    # Serving-sized layers: on the tiny test spec the per-layer scale/zero-point records would dominate.
    ranker = Ranker(replace(SPEC, user_dim=64, dim=16, cross_rank=32, deep_layers=[128, 64]), items)
    size = model_size_bytes(ranker)
    linear_bytes = 4 * sum(m.weight.numel() for m in ranker.modules() if isinstance(m, torch.nn.Linear))
    assert model_size_bytes(quantize_int8(ranker)) < size - 0.6 * linear_bytes  # int8: 3/4 of those bytes go
    assert model_size_bytes(shrink_ranker(ranker, ShrinkRatios(deep=0.5, cross_rank=0.5), items)) < 0.6 * size
    pruner = GradualMagnitudePruner(ranker_prune_targets(ranker), final_sparsity=0.5, total_steps=1)
    pruner.step()
    assert model_size_bytes(make_permanent(ranker)) == size  # dense storage: zeros cost as much


def test_random_request_has_the_shapes_ranker_forward_expects(ranker):
    user, hist, gaps, cand, score, trend = random_request(SPEC, n_candidates=40, history_length=7)
    assert user.shape == (1, SPEC.user_dim) and hist.shape == gaps.shape == (1, 7)
    assert cand.shape == score.shape == trend.shape == (1, 40)
    assert int(cand.min()) >= 2 and int(cand.max()) < SPEC.n_items
    assert ranker(user, hist, gaps, cand, score, trend).shape == (1, 40, 2)


def test_scoring_latency_reports_percentiles_and_restores_threads(ranker):
    threads = torch.get_num_threads()
    result = scoring_latency(quantize_int8(ranker), n_candidates=50, repeats=10, warmup=1)
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["n_candidates"] == 50 and result["threads"] == 1
    assert torch.get_num_threads() == threads


def test_interleaved_latency_times_every_model_in_turns_and_restores_modes(ranker, items):
    small = shrink_ranker(ranker, ShrinkRatios(deep=0.5, cross_rank=0.5, embedding_dim=0.5), items).train()
    calls: list[str] = []
    for name, model in (("dense", ranker), ("small", small)):
        model.register_forward_hook(lambda *_, n=name: calls.append(n))
    result = interleaved_latency({"dense": ranker, "small": small}, n_candidates=30, repeats=6, warmup=2,
                                 torchscript=False)  # hooks see eager calls only
    assert set(result) == {"dense", "small"} and all(r["repeats"] == 6 and r["p50_ms"] > 0 for r in result.values())
    assert calls == ["dense", "small"] * 8  # one call each per round, warm-up included
    assert small.training and not ranker.training  # modes restored


def test_latency_is_timed_in_the_torchscript_form_serving_runs(ranker):
    result = scoring_latency(ranker, n_candidates=20, repeats=3, warmup=1)
    assert result["torchscript"] and result["p50_ms"] > 0
