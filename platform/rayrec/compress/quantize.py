"""Post-training quantization for CPU serving: int8 dynamic quantization of Linear layers and fp16
export of the retrieval model's item embeddings.

Dynamic quantization stores each Linear weight as int8 (one symmetric scale per tensor) and
quantizes activations on the fly per batch, so it needs no calibration data and is deterministic:
the same float weights always give the same int8 model. It applies to ``nn.Linear`` only; the
Ranker's embedding tables stay float32 (they are gathered, not multiplied, so int8 would save
memory but no time). Quantized models are for inference: they have no gradients.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from rayrec.compress.prune import is_reparametrised
from rayrec.models.quantization import INT8_DYNAMIC, QUANTIZATIONS, int8_dynamic, is_quantized
from rayrec.models.two_tower import TwoTowerModel

__all__ = ["INT8_DYNAMIC", "QUANTIZATIONS", "is_quantized", "item_embeddings_fp16", "quantize_int8"]


def quantize_int8(model: nn.Module) -> nn.Module:
    """``rayrec.models.quantization.int8_dynamic`` for a model whose pruning is made permanent: the
    copy keeps the class and attributes (a Ranker keeps ``spec``, ``forward`` and ``score``)."""
    if is_reparametrised(model):
        raise ValueError("model carries pruning masks; call make_permanent(model) before quantizing")
    return int8_dynamic(model)


def item_embeddings_fp16(model: TwoTowerModel) -> np.ndarray:
    """[n_items, dim] float16 item vectors for the index: half the memory of float32 at a relative
    error of ~5e-4 per component (float16 has an 11-bit significand), far below the score gaps that
    decide a top-K. Computed in eval mode (no id dropout); the model's mode is restored."""
    was_training = model.training
    try:
        vectors = model.eval().all_item_embeddings()
    finally:
        model.train(was_training)
    return vectors.float().cpu().numpy().astype(np.float16)
