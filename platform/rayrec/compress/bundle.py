"""Saving and loading a compressed Ranker as an ordinary model bundle, its compression recorded in meta.

The bundle holds *float* weights of the (possibly shrunk, possibly pruned) model under the shrunk
spec, so every existing loader reads it unchanged; ``meta["compression"]`` says what was done:

    {"structured":   {"kind": "structured", "ratios": {...}, "original_spec": {...}, "spec": {...}} | None,
     "unstructured": {"kind": "unstructured", "sparsity": x, "per_module": {...}, ...} | None,
     "quantization": "int8_dynamic" | None}

Quantization is applied at load time, not stored: ``quantize_dynamic`` is deterministic in the
float weights, so loading re-creates the very same int8 model. (torch 2.13 can load a quantized
state dict with ``weights_only=True``, but such a bundle would need a quantized module tree before
``load_state_dict`` and every loader would have to know it; float weights keep one loading path.)
Loading stays ``weights_only=True`` through ``rayrec.artifacts.load_bundle``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayrec.artifacts import load_ranker_model, save_bundle
from rayrec.compress.prune import is_reparametrised
from rayrec.compress.quantize import QUANTIZATIONS, is_quantized
from rayrec.models.ranker import Ranker

KIND = "ranker"


def compression_meta(*, structured: dict[str, Any] | None = None, unstructured: dict[str, Any] | None = None,
                     quantization: str | None = None) -> dict[str, Any]:
    """``meta["compression"]`` from ``structured_record(...)``, ``pruner.summary()`` and a quantization name."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}")
    return {"structured": structured, "unstructured": unstructured, "quantization": quantization}


def save_compressed_ranker(directory: Path, model: Ranker, meta: dict[str, Any],
                           compression: dict[str, Any]) -> Path:
    """Save the float ``model`` as a ``ranker`` bundle. ``meta`` is the original bundle's meta (vocabulary
    fingerprint, config, ...); its spec is replaced by the model's own and ``compression`` is added."""
    if is_quantized(model):
        raise ValueError("save the float model and pass quantization in compression_meta; "
                         "load_compressed_ranker quantizes it again, identically")
    if is_reparametrised(model):
        raise ValueError("model carries pruning masks; call make_permanent(model) before saving")
    full = {**meta, "kind": KIND, "spec": model.spec.to_dict(), "compression": compression}
    return save_bundle(Path(directory), model, full)


# A compressed bundle is an ordinary ranker bundle: one loader for every caller, serving included.
load_compressed_ranker = load_ranker_model
