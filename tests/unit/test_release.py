"""The release folder: versions, publishing (LATEST last), and the checks `load_release` makes before
anything is loaded from a release (every file against its SHA-256, the manifest against its schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rayrec.artifacts import ArtifactError
from rayrec.release import (
    LATEST,
    ReleaseLayout,
    file_digests,
    list_versions,
    load_release,
    next_version,
    publish_release,
    read_manifest,
    resolve_release,
    staging_layout,
)


def manifest_fields(version: str, files: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"version": version, "created_at": "2026-01-01T00:00:00Z", "config_name": "t", "vocab_fingerprint": "f",
            "n_items": 3, "dim": 4, "title_tokens": 2, "history_length": 5, "files": files, **extra}


def publish(root: Path, **extra: Any) -> Path:
    staging = staging_layout(root, next_version(root))
    staging.items.write_bytes(b"items")
    staging.index.mkdir()
    (staging.index / "faiss.index").write_bytes(b"index")
    return publish_release(staging, manifest_fields(next_version(root), file_digests(staging.path), **extra), root)


def test_versions_count_up_and_latest_names_the_newest(tmp_path: Path) -> None:
    assert list_versions(tmp_path) == [] and next_version(tmp_path) == "v1"
    first = publish(tmp_path)
    second = publish(tmp_path)
    assert (first.name, second.name) == ("v1", "v2")
    assert (tmp_path / LATEST).read_text() == "v2"
    assert resolve_release(tmp_path, None) == second and resolve_release(tmp_path, "v1") == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_versions_sort_by_number_not_by_text(tmp_path: Path) -> None:
    for _ in range(10):
        publish(tmp_path)
    assert list_versions(tmp_path)[-2:] == ["v9", "v10"] and next_version(tmp_path) == "v11"


def test_unpublished_folders_are_not_releases(tmp_path: Path) -> None:
    staging_layout(tmp_path, "v1").items.write_bytes(b"half written")
    assert list_versions(tmp_path) == []
    with pytest.raises(ArtifactError, match="no serving release yet"):
        resolve_release(tmp_path, None)
    publish(tmp_path)
    with pytest.raises(ArtifactError, match="versions here: v1"):
        resolve_release(tmp_path, "v7")


def test_load_release_reads_the_typed_manifest(tmp_path: Path) -> None:
    trend = {"window_days": 7.0, "as_of_ms": 5, "cold_start": "trending"}
    release = load_release(publish(tmp_path, trend=trend, has_ranker=True, future_field=1))
    assert release.version == "v1" and release.manifest.has_ranker and release.manifest.cold_start_trending
    assert release.layout == ReleaseLayout(tmp_path / "v1")
    assert set(release.manifest.files) == {"items.parquet", "index/faiss.index"}


def test_a_release_without_the_policy_answers_cold_users_with_the_model(tmp_path: Path) -> None:
    assert not load_release(publish(tmp_path)).manifest.cold_start_trending


@pytest.mark.parametrize(("damage", "message"), [
    (lambda layout: layout.items.write_bytes(b"other items"), "does not match its SHA-256"),
    (lambda layout: (layout.index / "faiss.index").write_bytes(b""), "does not match its SHA-256"),
    (lambda layout: layout.items.unlink(), "listed in release.json but missing"),
])  # fmt: skip
def test_a_changed_or_missing_file_is_refused(tmp_path: Path, damage: Any, message: str) -> None:
    layout = ReleaseLayout(publish(tmp_path))
    damage(layout)
    with pytest.raises(ArtifactError, match=message):
        load_release(layout.path)


def test_a_manifest_of_another_shape_is_refused_with_the_field(tmp_path: Path) -> None:
    layout = ReleaseLayout(publish(tmp_path))
    broken = json.loads(layout.manifest.read_text())
    del broken["n_items"]
    layout.manifest.write_text(json.dumps(broken))
    with pytest.raises(ArtifactError, match="n_items"):
        read_manifest(layout.path)


def test_an_invalid_manifest_is_never_published(tmp_path: Path) -> None:
    staging = staging_layout(tmp_path, "v1")
    with pytest.raises(ValueError, match="n_items"):
        publish_release(staging, {"version": "v1", "files": {}}, tmp_path)
    assert list_versions(tmp_path) == [] and not (tmp_path / LATEST).exists()
