"""`rayrec build-index`: a serving release, the one folder Ray Serve reads.

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
      LATEST                   name of the newest complete release (written last)

A release is written under a temporary name and renamed into place, and ``LATEST`` is replaced
atomically after that, so a reader never sees half a release.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayrec.artifacts import ArtifactError, load_two_tower_model, read_meta
from rayrec.config import RayrecConfig
from rayrec.features.items import ItemFeatureTable
from rayrec.features.trend import ItemTrend
from rayrec.features.vocab import Vocabulary
from rayrec.files import file_sha256
from rayrec.index.ann import build_item_index
from rayrec.index.text_search import build_search_index

RELEASE_JSON = "release.json"
LATEST = "LATEST"
ITEMS = "items.parquet"
SEARCH = "search"
EMBEDDINGS = "item_embeddings.npy"
TREND = "item_trend.npy"
HISTORIES = "user_histories.parquet"
USERS = "users.json"  # only when the user tower reads user ids
BUNDLE_FILES = ("meta.json", "weights.pt")  # optimizer state stays with training


def release_root(cfg: RayrecConfig) -> Path:
    return Path(cfg.serve.release_dir or Path(cfg.train.out_dir) / "serving")


def resolve_release(root: Path, version: str | None) -> Path:
    """The folder of ``version``, or of the latest release; a clear error when there is none."""
    root = Path(root)
    if version is None:
        latest = root / LATEST
        if not latest.is_file():
            raise ArtifactError(f"{root}: no serving release yet; run `rayrec build-index --config ...` first")
        version = latest.read_text().strip()
    path = root / version
    if not (path / RELEASE_JSON).is_file():
        raise ArtifactError(f"{path}: not a complete serving release (no {RELEASE_JSON}); "
                            f"versions here: {', '.join(list_versions(root)) or 'none'}")
    return path


def list_versions(root: Path) -> list[str]:
    if not Path(root).is_dir():
        return []
    found = [p.name for p in Path(root).iterdir() if (p / RELEASE_JSON).is_file()]
    return sorted(found, key=_version_number)


def _version_number(name: str) -> int:
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else -1


def user_histories(processed: Path, users: Vocabulary, items: pd.Series, max_history: int) -> pa.Table:
    """The last ``max_history`` interactions of every user, oldest first, with string ids."""
    table = pads.dataset(processed / "events").to_table(columns=["user_idx", "item_idx", "ts_ms", "stage"])
    df = table.to_pandas().sort_values(["user_idx", "ts_ms"], kind="stable")
    df = df.groupby("user_idx", sort=False).tail(max_history)
    grouped = df.groupby("user_idx", sort=True)
    user_ids = np.asarray(users.values, dtype=object)
    return pa.table({
        "user_id": pa.array(user_ids[np.asarray(list(grouped.groups.keys()), dtype=np.int64)], pa.string()),
        "item_id": pa.array(grouped["item_idx"].apply(lambda s: items.loc[s.to_numpy()].tolist()).tolist(),
                            pa.list_(pa.string())),
        "stage": pa.array(grouped["stage"].apply(list).tolist(), pa.list_(pa.int8())),
        "ts_ms": pa.array(grouped["ts_ms"].apply(list).tolist(), pa.list_(pa.int64())),
    })  # fmt: skip


def _copy_bundle(source: Path, target: Path) -> dict[str, Any]:
    meta = read_meta(source)  # fails clearly when the folder is not a bundle
    target.mkdir(parents=True)
    for name in BUNDLE_FILES:
        shutil.copy2(source / name, target / name)
    return meta


def build_release(cfg: RayrecConfig, progress: Callable[[str], None] = lambda _msg: None) -> Path:
    """Write the next release version from the trained models and processed data; returns its folder."""
    import torch

    processed, models = Path(cfg.preprocess.out_dir), Path(cfg.train.out_dir)
    manifest = json.loads((processed / "manifest.json").read_text())
    fingerprint = str(manifest["vocab_fingerprint"])
    n_items = manifest["vocab_sizes"]["items"]
    items = ItemFeatureTable.from_parquet(processed / "items.parquet", n_items, cfg.preprocess.title_tokens)
    ranker_dir = Path(cfg.serve.ranker_dir) if cfg.serve.ranker_dir else models / "ranker"

    root = release_root(cfg)
    versions = list_versions(root)
    version = f"v{(_version_number(versions[-1]) + 1) if versions else 1}"
    staging = root / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        progress(f"copying models into {version}")
        _copy_bundle(models / "two_tower", staging / "two_tower")
        ranker_meta = _copy_bundle(ranker_dir, staging / "ranker") if ranker_dir.exists() else None
        shutil.copy2(processed / "items.parquet", staging / ITEMS)

        progress("embedding items with the item tower")
        retrieval = load_two_tower_model(models / "two_tower", items, fingerprint)
        with torch.no_grad():
            embeddings = retrieval.all_item_embeddings().float().numpy()
        np.save(staging / EMBEDDINGS, embeddings)

        progress("building the FAISS index")
        index = build_item_index(embeddings, cfg.index, fingerprint, progress=progress)
        index.save(staging / "index")

        search = None
        if cfg.search.enabled:
            catalog = pq.read_table(processed / "items.parquet",
                                    columns=["item_idx", "title", "category", "brand"]).to_pandas()
            search = build_search_index(catalog, n_items, fingerprint, cfg.search, cfg.index, staging / SEARCH,
                                        progress=progress)

        progress("writing the feature store's starting histories")
        item_ids = pq.read_table(processed / "items.parquet", columns=["item_idx", "item_id"]).to_pandas()
        id_of = pd.Series(item_ids["item_id"].to_numpy(), index=item_ids["item_idx"].to_numpy())
        users = Vocabulary.load(processed / "vocab", "users")
        pq.write_table(user_histories(processed, users, id_of, cfg.serve.feature_store.max_history),
                       staging / HISTORIES)

        progress("counting each item's recent interactions")
        ranker_spec = (ranker_meta or {}).get("spec", {})
        window_days = float(ranker_spec.get("trend_window_days", cfg.ranker.trend_window_days))
        trend = ItemTrend.from_parquet(processed / "events")
        trend_as_of = trend.last_ms + 1  # the counts a request right after the last logged event would see
        np.save(staging / TREND, trend.as_of(trend_as_of, window_days, n_items))

        if retrieval.spec.use_user_id:  # the user tower then needs user_id -> user_idx
            shutil.copy2(processed / "vocab" / "users.json", staging / USERS)

        files = {str(p.relative_to(staging)): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        release = {
            "version": version, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config_name": cfg.name, "vocab_fingerprint": fingerprint, "n_items": n_items,
            "dim": int(embeddings.shape[1]), "title_tokens": cfg.preprocess.title_tokens,
            "history_length": int(retrieval.spec.history_length), "use_user_id": retrieval.spec.use_user_id,
            "has_ranker": ranker_meta is not None,
            "ranker_compression": (ranker_meta or {}).get("compression"),
            "ranker_source": str(ranker_dir),
            "trend": {"window_days": window_days, "as_of_ms": trend_as_of, "cold_start": cfg.ranker.cold_start},
            "index": index.manifest.to_dict(), "search": search, "files": files,
        }  # fmt: skip
        (staging / RELEASE_JSON).write_text(json.dumps(release, indent=2, default=str))
        final = root / version
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(version)
    os.replace(tmp, root / LATEST)
    return final


def verify_release(path: Path) -> dict[str, Any]:
    """``release.json`` after checking every listed file against its SHA-256: a replaced or truncated
    file is refused before anything is loaded from it."""
    path = Path(path)
    release = json.loads((path / RELEASE_JSON).read_text())
    for name, expected in release["files"].items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in {RELEASE_JSON} but missing; rebuild the release")
        if file_sha256(file) != expected:
            raise ArtifactError(f"{file}: does not match its SHA-256 in {RELEASE_JSON}; the file is corrupt or "
                                "was replaced; rebuild the release")
    return release
