"""The on-disk model bundle that later stages read: weights, sizes, vocabulary fingerprint, metadata.

A bundle is a folder: ``weights.pt`` (a plain state dict, loaded with ``weights_only=True`` so a
tampered file cannot run code), ``meta.json`` (model kind, spec, vocabulary fingerprint, epoch,
metrics, the SHA-256 of the weights) and optionally ``optimizer.pt`` for resuming. Loading checks
the hash and the vocabulary fingerprint before any tensor reaches a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rayrec.files import file_sha256

if TYPE_CHECKING:
    from rayrec.features.items import ItemFeatureTable
    from rayrec.models.ranker import Ranker
    from rayrec.models.two_tower import TwoTowerModel

WEIGHTS = "weights.pt"
OPTIMIZER = "optimizer.pt"
META = "meta.json"


class ArtifactError(RuntimeError):
    """A bundle that must not be used: missing, corrupt, or built for other data."""


def save_bundle(directory: Path, model: nn.Module, meta: dict[str, Any],
                optimizer: torch.optim.Optimizer | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / OPTIMIZER)
    full = {**meta, "weights_sha256": file_sha256(directory / WEIGHTS)}
    (directory / META).write_text(json.dumps(full, indent=2, default=str))
    return directory


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {META}; not a rayrec model bundle")
    return json.loads(path.read_text())


def load_bundle(directory: Path, kind: str, vocab_fingerprint: str | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, meta) after checking kind, weights hash and vocabulary fingerprint."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("kind") != kind:
        raise ArtifactError(f"{directory}: holds a {meta.get('kind')!r} model, expected {kind!r}")
    weights = directory / WEIGHTS
    if not weights.is_file() or file_sha256(weights) != meta.get("weights_sha256"):
        raise ArtifactError(f"{weights}: missing or does not match the hash in {META}; the file is corrupt or was replaced")
    if vocab_fingerprint is not None and meta.get("vocab_fingerprint") != vocab_fingerprint:
        raise ArtifactError(
            f"{directory}: trained on vocabulary {meta.get('vocab_fingerprint')}, but the data has "
            f"{vocab_fingerprint}; retrain on this data, or point preprocess.out_dir at the data it was trained on"
        )
    return torch.load(weights, map_location="cpu", weights_only=True), meta


def load_optimizer_state(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / OPTIMIZER
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_two_tower_model(directory: Path, items: "ItemFeatureTable", vocab_fingerprint: str | None) -> "TwoTowerModel":
    """A trained retrieval model from its bundle, in eval mode (training-only settings such as
    dropout do not matter there; the temperature is a saved parameter)."""
    from rayrec.models.two_tower import TwoTowerModel, TwoTowerSpec

    state, meta = load_bundle(Path(directory), "two_tower", vocab_fingerprint)
    model = TwoTowerModel(TwoTowerSpec(**meta["spec"]), items)
    _load_weights(model, state, Path(directory))
    return model.eval()


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """``load_state_dict``, with an error that says what to do when the bundle's tensors do not fit
    the model this version builds from its spec (a bundle saved before the model's inputs changed)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise ArtifactError(f"{directory}: its weights do not fit the {type(model).__name__} this rayrec builds "
                            f"from its spec ({first.strip()}); it was saved by an older version: retrain it "
                            "(`rayrec train`) and rebuild the release") from None


def load_ranker_model(directory: Path, items: "ItemFeatureTable", vocab_fingerprint: str | None) -> "Ranker":
    """A ranker bundle's model in eval mode, int8-quantized when ``meta["compression"]`` says so (the
    bundle holds float weights; quantization is deterministic, so re-applying it at load gives the
    very model that was measured). A bundle without compression loads as the float model it is."""
    from rayrec.models.quantization import QUANTIZATIONS, int8_dynamic
    from rayrec.models.ranker import Ranker, RankerSpec

    state, meta = load_bundle(Path(directory), "ranker", vocab_fingerprint)
    model = Ranker(RankerSpec(**meta["spec"]), items)
    _load_weights(model, state, Path(directory))
    model.eval()
    quantization = (meta.get("compression") or {}).get("quantization")
    if quantization is None:
        return model
    if quantization not in QUANTIZATIONS:
        raise ArtifactError(f"{directory}: unknown quantization {quantization!r} in meta; known: "
                            f"{', '.join(QUANTIZATIONS)}")
    return int8_dynamic(model)
