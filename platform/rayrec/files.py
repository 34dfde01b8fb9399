"""Durable-file primitives shared by model bundles, indexes, releases and the feature store: content
hashes that loaders check, and fsync for writes that must survive a crash. Standard library only, so
light processes (feature-store actors) can use it without importing torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks (indexes and releases can be larger than memory wants)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or folder by path (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
