from __future__ import annotations

import pytest
import torch

from rayrec.artifacts import ArtifactError, load_bundle, read_meta
from rayrec.compress.bundle import compression_meta, load_compressed_ranker, save_compressed_ranker
from rayrec.compress.prune import GradualMagnitudePruner, make_permanent, ranker_prune_targets
from rayrec.compress.quantize import INT8_DYNAMIC, is_quantized, quantize_int8
from rayrec.compress.shrink import ShrinkRatios, shrink_ranker, structured_record
from rayrec.models.ranker import Ranker, RankerSpec
from tests.unit.compress.conftest import batch_inputs

BASE_META = {"kind": "ranker", "vocab_fingerprint": "abc123", "config": {"name": "t"}, "weights_sha256": "old"}


def _compressed(ranker, items):
    ratios = ShrinkRatios(deep=0.5, cross_rank=0.25, embedding_dim=0.25)
    small = shrink_ranker(ranker, ratios, items)
    pruner = GradualMagnitudePruner(ranker_prune_targets(small), final_sparsity=0.3, total_steps=2)
    pruner.step(), pruner.step()
    make_permanent(small)
    return small, compression_meta(structured=structured_record(ranker, ratios, small),
                                   unstructured=pruner.summary(), quantization=INT8_DYNAMIC)


def test_compressed_bundle_round_trips_with_its_metadata(ranker, items, tmp_path):
    small, compression = _compressed(ranker, items)
    save_compressed_ranker(tmp_path, small, BASE_META, compression)
    meta = read_meta(tmp_path)
    assert meta["compression"] == compression and meta["spec"] == small.spec.to_dict()
    assert meta["compression"]["structured"]["original_spec"] == ranker.spec.to_dict()
    assert meta["compression"]["unstructured"]["kind"] == "unstructured"
    assert meta["weights_sha256"] != "old" and meta["config"] == {"name": "t"}

    loaded = load_compressed_ranker(tmp_path, items, "abc123")
    assert is_quantized(loaded) and not loaded.training
    x = batch_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(*x), quantize_int8(small)(*x))  # re-quantizing is deterministic


def test_a_compressed_bundle_still_loads_through_the_plain_float_path(ranker, items, tmp_path):
    small, compression = _compressed(ranker, items)
    save_compressed_ranker(tmp_path, small, BASE_META, compression)
    state, meta = load_bundle(tmp_path, "ranker", "abc123")  # weights_only=True inside
    plain = Ranker(RankerSpec(**meta["spec"]), items).eval()
    plain.load_state_dict(state)
    x = batch_inputs()
    with torch.no_grad():
        assert torch.equal(plain(*x), small.eval()(*x))


def test_uncompressed_meta_loads_as_float_and_wrong_vocabulary_is_refused(ranker, items, tmp_path):
    save_compressed_ranker(tmp_path, ranker, BASE_META, compression_meta())
    assert not is_quantized(load_compressed_ranker(tmp_path, items, None))
    with pytest.raises(ArtifactError, match="vocabulary"):
        load_compressed_ranker(tmp_path, items, "other")


def test_quantized_or_masked_models_and_unknown_quantizations_are_refused(ranker, items, tmp_path):
    with pytest.raises(ValueError, match="float model"):
        save_compressed_ranker(tmp_path, quantize_int8(ranker), BASE_META, compression_meta(quantization=INT8_DYNAMIC))
    with pytest.raises(ValueError, match="unknown quantization"):
        compression_meta(quantization="int4")
    GradualMagnitudePruner(ranker_prune_targets(ranker), final_sparsity=0.1, total_steps=1)
    with pytest.raises(ValueError, match="make_permanent"):
        save_compressed_ranker(tmp_path, ranker, BASE_META, compression_meta())


def test_a_bundle_whose_weights_no_longer_fit_the_model_is_refused_with_the_fix(ranker, items, tmp_path):
    from rayrec.artifacts import load_ranker_model, save_bundle

    state = ranker.state_dict()
    state["norm.weight"] = state["norm.weight"][:-1]  # as saved by a ranker with one input fewer
    holder = torch.nn.Module()
    holder.state_dict = lambda: state  # type: ignore[method-assign]
    save_bundle(tmp_path, holder, {**BASE_META, "spec": ranker.spec.to_dict()})
    with pytest.raises(ArtifactError, match="older version: retrain it"):
        load_ranker_model(tmp_path, items, "abc123")
