"""Post-training quantization for CPU serving: int8 dynamic quantization of Linear layers and fp16
export of the retrieval model's item embeddings.

Dynamic quantization stores each Linear weight as int8 (one symmetric scale per tensor) and
quantizes activations on the fly per batch, so it needs no calibration data and is deterministic:
the same float weights always give the same int8 model. It applies to ``nn.Linear`` only; the
Ranker's embedding tables stay float32 (they are gathered, not multiplied, so int8 would save
memory but no time). Quantized models are for inference: they have no gradients.
"""

from __future__ import annotations

import copy
import warnings
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from rayrec.compress.prune import is_reparametrised
from rayrec.models.two_tower import TwoTowerModel

INT8_DYNAMIC = "int8_dynamic"
QUANTIZATIONS = (INT8_DYNAMIC,)

M = TypeVar("M", bound=nn.Module)


def quantize_int8(model: M) -> M:
    """An eval-mode copy of ``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8
    Linear (``torch.ao.quantization.quantize_dynamic``); ``model`` itself is not changed. The copy
    keeps the class and attributes (a Ranker keeps ``spec``, ``forward`` and ``score``)."""
    if is_reparametrised(model):
        raise ValueError("model carries pruning masks; call make_permanent(model) before quantizing")
    float_model = copy.deepcopy(model).eval()
    # torch 2.13 marks the eager torch.ao.quantization API and quantized tensors deprecated in favour
    # of torchao, which is not a dependency; both still work and are what the CPU build ships with.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantizedLinear) for m in model.modules())


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
