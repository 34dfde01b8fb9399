"""The serving release: its folder layout, its typed manifest (``release.json``), and finding,
verifying and publishing one. Every release file name lives here; ``index/build.py`` writes a
release, serve/ reads one, and both go through :class:`ReleaseLayout`.

A release is immutable and self-contained, so Serve needs neither the processed data nor any
training code, and swapping versions is swapping folders::

    <serve.release_dir>/
      v3/
        release.json           version, vocabulary fingerprint, sizes, SHA-256 of every file
        two_tower/  ranker/    model bundles (the ranker may be a compressed one)
        items.parquet          item features and display fields (id, title, category, brand, price)
        item_embeddings.npy    float32 [n_items, dim] from the item tower (similar items, filters)
        item_trend.npy         float32 [n_items] interactions per item in the ranker's trend window
                               before the end of the log (the ranker's trend input, trending candidates, the
                               cold-start list)
        index/                 FAISS index + manifest (measured recall and queries/s)
        search/                lexical (tantivy) + semantic (MiniLM vectors in FAISS) indexes
        user_histories.parquet last events per user: the feature store's starting state
        users.json             user id -> index, only when the user tower reads user ids
      LATEST                   name of the newest complete release (written last)

A release is written under a temporary name and renamed into place, and ``LATEST`` is replaced
atomically after that, so a reader never sees half a release.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from rayrec.artifacts import ArtifactError
from rayrec.config import RayrecConfig
from rayrec.files import file_sha256

RELEASE_JSON = "release.json"
LATEST = "LATEST"


@dataclass(frozen=True)
class ReleaseLayout:
    """The paths inside one release folder (a finished release or one being built)."""

    path: Path

    @property
    def manifest(self) -> Path:
        return self.path / RELEASE_JSON

    @property
    def two_tower(self) -> Path:
        return self.path / "two_tower"

    @property
    def ranker(self) -> Path:
        return self.path / "ranker"

    @property
    def items(self) -> Path:
        return self.path / "items.parquet"

    @property
    def embeddings(self) -> Path:
        return self.path / "item_embeddings.npy"

    @property
    def trend(self) -> Path:
        return self.path / "item_trend.npy"

    @property
    def index(self) -> Path:
        return self.path / "index"

    @property
    def search(self) -> Path:
        return self.path / "search"

    @property
    def histories(self) -> Path:
        return self.path / "user_histories.parquet"

    @property
    def users(self) -> Path:
        """The user vocabulary file (``Vocabulary.load(layout.path, "users")`` reads it)."""
        return self.path / "users.json"


class ReleaseTrend(BaseModel):
    model_config = ConfigDict(extra="ignore")

    window_days: float  # what item_trend.npy counts
    as_of_ms: int  # the counts are as of this time (just after the last logged event)
    cold_start: str = "model"  # the ranker's cold-start policy at build time (ranker.cold_start)


class ReleaseManifest(BaseModel):
    """``release.json``: what was built, from what, and the SHA-256 of every file."""

    model_config = ConfigDict(extra="ignore")

    version: str
    created_at: str
    config_name: str
    vocab_fingerprint: str
    n_items: int
    dim: int
    title_tokens: int
    history_length: int
    use_user_id: bool = False
    has_ranker: bool = False
    ranker_compression: dict[str, Any] | None = None
    ranker_source: str | None = None
    trend: ReleaseTrend | None = None
    index: dict[str, Any] = {}
    search: dict[str, Any] | None = None
    files: dict[str, str]

    @property
    def cold_start_trending(self) -> bool:
        """Users without history get the trending order (releases without the policy: the model)."""
        return self.trend is not None and self.trend.cold_start == "trending"


@dataclass(frozen=True)
class Release:
    """One release on disk: where its files are and what its manifest says."""

    layout: ReleaseLayout
    manifest: ReleaseManifest

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def version(self) -> str:
        return self.manifest.version


def release_root(cfg: RayrecConfig) -> Path:
    return Path(cfg.serve.release_dir or Path(cfg.train.out_dir) / "serving")


def list_versions(root: Path) -> list[str]:
    if not Path(root).is_dir():
        return []
    found = [p.name for p in Path(root).iterdir() if ReleaseLayout(p).manifest.is_file()]
    return sorted(found, key=_version_number)


def _version_number(name: str) -> int:
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else -1


def next_version(root: Path) -> str:
    versions = list_versions(root)
    return f"v{(_version_number(versions[-1]) + 1) if versions else 1}"


def resolve_release(root: Path, version: str | None) -> Path:
    """The folder of ``version``, or of the latest release; a clear error when there is none."""
    root = Path(root)
    if version is None:
        latest = root / LATEST
        if not latest.is_file():
            raise ArtifactError(f"{root}: no serving release yet; run `rayrec build-index --config ...` first")
        version = latest.read_text().strip()
    path = root / version
    if not ReleaseLayout(path).manifest.is_file():
        raise ArtifactError(f"{path}: not a complete serving release (no {RELEASE_JSON}); "
                            f"versions here: {', '.join(list_versions(root)) or 'none'}")
    return path


def read_manifest(path: Path) -> ReleaseManifest:
    """``release.json`` of the release at ``path``, parsed, without checking the files."""
    file = ReleaseLayout(Path(path)).manifest
    try:
        return ReleaseManifest.model_validate_json(file.read_text())
    except ValidationError as error:
        raise ArtifactError(f"{file}: not a release manifest this version reads ({error.errors()[0]['loc']}: "
                            f"{error.errors()[0]['msg']}); rebuild the release with `rayrec build-index`") from None


def load_release(path: Path) -> Release:
    """The release at ``path`` after checking every listed file against its SHA-256: a replaced or
    truncated file is refused before anything is loaded from it."""
    layout = ReleaseLayout(Path(path))
    manifest = read_manifest(layout.path)
    for name, expected in manifest.files.items():
        file = layout.path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in {RELEASE_JSON} but missing; rebuild the release")
        if file_sha256(file) != expected:
            raise ArtifactError(f"{file}: does not match its SHA-256 in {RELEASE_JSON}; the file is corrupt or "
                                "was replaced; rebuild the release")
    return Release(layout, manifest)


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, keyed by its path relative to it."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def publish_release(staging: ReleaseLayout, manifest: dict[str, Any], root: Path) -> Path:
    """Writes ``manifest`` (validated as a :class:`ReleaseManifest`) into ``staging``, renames the folder
    to its version and points ``LATEST`` at it; returns the release's folder."""
    checked = ReleaseManifest.model_validate(manifest)
    staging.manifest.write_text(json.dumps(manifest, indent=2, default=str))
    final = Path(root) / checked.version
    os.replace(staging.path, final)
    tmp = Path(root) / f".{LATEST}.tmp"
    tmp.write_text(checked.version)
    os.replace(tmp, Path(root) / LATEST)
    return final


def staging_layout(root: Path, version: str) -> ReleaseLayout:
    """An empty folder beside the releases to build ``version`` in (hidden until published)."""
    staging = Path(root) / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return ReleaseLayout(staging)
