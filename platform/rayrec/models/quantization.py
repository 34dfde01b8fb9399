"""int8 dynamic quantization of a model's Linear layers: the one conversion offline measurement and
serving both apply, so a quantized ranker scores the same wherever it is loaded.

Dynamic quantization stores each Linear weight as int8 (one symmetric scale per tensor) and
quantizes activations on the fly per batch: no calibration data, and deterministic, so the same
float weights always give the same int8 model.
"""

from __future__ import annotations

import copy
import warnings
from typing import TypeVar

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

INT8_DYNAMIC = "int8_dynamic"
QUANTIZATIONS = (INT8_DYNAMIC,)

M = TypeVar("M", bound=nn.Module)


def int8_dynamic(model: M) -> M:
    """An eval-mode copy of ``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8
    Linear; ``model`` itself is not changed. The copy keeps its class and attributes."""
    float_model = copy.deepcopy(model).eval()
    # torch 2.13 marks the eager torch.ao.quantization API and quantized tensors deprecated in favour
    # of torchao, which is not a dependency; both still work and are what the CPU build ships with.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantizedLinear) for m in model.modules())
