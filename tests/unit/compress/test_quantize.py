from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rayrec.compress.quantize import is_quantized, item_embeddings_fp16, quantize_int8
from rayrec.models.ranker import Ranker, inference_graph
from rayrec.models.two_tower import TwoTowerModel
from tests.unit.compress.conftest import SPEC, TT_SPEC, batch_inputs
from tests.unit.models.conftest import N_ITEMS

# int8 weights with one symmetric scale per tensor and per-batch uint8 activations err by ~1% of each
# layer's range; through LayerNorm, two cross layers, two deep layers and the head that moved logits
# by <= 0.022 and probabilities by <= 0.0052 over 10 random seeds (sigmoid's slope is <= 1/4).
# 0.02 leaves ~4x headroom and is still far below what reorders a served top-K on its own.
PROB_TOLERANCE = 0.02


def test_int8_replaces_every_linear_and_scores_match_float_within_tolerance(items):
    for seed in range(3):
        torch.manual_seed(seed)
        model = Ranker(SPEC, items).eval()
        quantized = quantize_int8(model)
        assert is_quantized(quantized) and not is_quantized(model)
        assert not any(type(m) is nn.Linear for m in quantized.modules())
        assert quantized.spec == SPEC  # still a Ranker: spec, forward and score survive
        x = batch_inputs(batch=16, candidates=9, seed=seed)
        with torch.no_grad():
            p_float, p_int8 = torch.sigmoid(model(*x)), torch.sigmoid(quantized(*x))
        assert (p_float - p_int8).abs().max() < PROB_TOLERANCE
        assert not torch.equal(p_float, p_int8)  # it did quantize


def test_quantizing_is_deterministic_and_leaves_the_float_model_alone(ranker):
    before = {k: v.clone() for k, v in ranker.state_dict().items()}
    a, b = quantize_int8(ranker), quantize_int8(ranker)
    x = batch_inputs()
    with torch.no_grad():
        assert torch.equal(a(*x), b(*x))
    assert all(torch.equal(before[k], v) for k, v in ranker.state_dict().items())
    assert isinstance(ranker.deep[0], nn.Linear)


def test_item_embeddings_export_as_float16_close_to_float32(items):
    torch.manual_seed(0)
    model = TwoTowerModel(TT_SPEC, items).train()
    exported = item_embeddings_fp16(model)
    assert model.training  # mode restored
    assert exported.dtype == np.float16 and exported.shape == (N_ITEMS, TT_SPEC.dim)
    reference = model.eval().all_item_embeddings().numpy()
    assert np.abs(exported.astype(np.float32) - reference).max() < 1e-3  # eval mode: no id dropout
    assert np.allclose(np.linalg.norm(exported.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_torchscript_form_scores_like_the_eager_ranker_dense_and_int8(ranker):
    for model in (ranker, quantize_int8(ranker)):
        graph = inference_graph(model)
        for batch, candidates, history in ((2, 7, 5), (9, 40, 5), (3, 2, 11)):  # shapes unlike the trace's
            x = batch_inputs(batch=batch, candidates=candidates, history=history, seed=batch)
            with torch.no_grad():
                assert torch.equal(graph(*x), model(*x))
