"""`rayrec build-index`: writes the next serving release (layout and manifest: ``rayrec.release``)
from the trained models and the processed data: item embeddings, the FAISS index, the search
indexes, the trend counts and the feature store's starting histories."""

from __future__ import annotations

import json
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

from rayrec.artifacts import load_two_tower_model, read_meta
from rayrec.config import RayrecConfig
from rayrec.features.items import ItemFeatureTable
from rayrec.features.trend import ItemTrend
from rayrec.features.vocab import Vocabulary
from rayrec.index.ann import build_item_index
from rayrec.index.text_search import build_search_index
from rayrec.release import (ReleaseLayout, file_digests, next_version, publish_release, release_root,
                            staging_layout)

BUNDLE_FILES = ("meta.json", "weights.pt")  # optimizer state stays with training


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
    processed, models = Path(cfg.preprocess.out_dir), Path(cfg.train.out_dir)
    manifest = json.loads((processed / "manifest.json").read_text())
    ranker_dir = Path(cfg.serve.ranker_dir) if cfg.serve.ranker_dir else models / "ranker"
    root = release_root(cfg)
    version = next_version(root)
    staging = staging_layout(root, version)
    try:
        progress(f"copying models into {version}")
        _copy_bundle(models / "two_tower", staging.two_tower)
        ranker_meta = _copy_bundle(ranker_dir, staging.ranker) if ranker_dir.exists() else None
        shutil.copy2(processed / "items.parquet", staging.items)
        built = _write_item_files(cfg, processed, staging, manifest, progress)
        progress("writing the feature store's starting histories")
        _write_histories(cfg, processed, staging)
        progress("counting each item's recent interactions")
        trend = _write_trend(cfg, processed, staging, (ranker_meta or {}).get("spec", {}), built["n_items"])
        release = {
            "version": version, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config_name": cfg.name, "title_tokens": cfg.preprocess.title_tokens, **built,
            "has_ranker": ranker_meta is not None, "ranker_compression": (ranker_meta or {}).get("compression"),
            "ranker_source": str(ranker_dir), "trend": trend, "files": file_digests(staging.path),
        }  # fmt: skip
        return publish_release(staging, release, root)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise


def _write_item_files(cfg: RayrecConfig, processed: Path, staging: ReleaseLayout, manifest: dict[str, Any],
                      progress: Callable[[str], None]) -> dict[str, Any]:
    """Item embeddings, the FAISS index over them and the search indexes; returns their manifest fields."""
    import torch

    fingerprint = str(manifest["vocab_fingerprint"])
    n_items = manifest["vocab_sizes"]["items"]
    items = ItemFeatureTable.from_parquet(processed / "items.parquet", n_items, cfg.preprocess.title_tokens)
    progress("embedding items with the item tower")
    retrieval = load_two_tower_model(staging.two_tower, items, fingerprint)
    with torch.no_grad():
        embeddings = retrieval.all_item_embeddings().float().numpy()
    np.save(staging.embeddings, embeddings)
    progress("building the FAISS index")
    index = build_item_index(embeddings, cfg.index, fingerprint, progress=progress)
    index.save(staging.index)
    search = None
    if cfg.search.enabled:
        catalog = pq.read_table(processed / "items.parquet",
                                columns=["item_idx", "title", "category", "brand"]).to_pandas()
        search = build_search_index(catalog, n_items, fingerprint, cfg.search, cfg.index, staging.search,
                                    progress=progress)
    if retrieval.spec.use_user_id:  # the user tower then needs user_id -> user_idx
        shutil.copy2(processed / "vocab" / "users.json", staging.users)
    return {"vocab_fingerprint": fingerprint, "n_items": n_items, "dim": int(embeddings.shape[1]),
            "history_length": int(retrieval.spec.history_length), "use_user_id": retrieval.spec.use_user_id,
            "index": index.manifest.to_dict(), "search": search}


def _write_histories(cfg: RayrecConfig, processed: Path, staging: ReleaseLayout) -> None:
    item_ids = pq.read_table(processed / "items.parquet", columns=["item_idx", "item_id"]).to_pandas()
    id_of = pd.Series(item_ids["item_id"].to_numpy(), index=item_ids["item_idx"].to_numpy())
    users = Vocabulary.load(processed / "vocab", "users")
    pq.write_table(user_histories(processed, users, id_of, cfg.serve.feature_store.max_history), staging.histories)


def _write_trend(cfg: RayrecConfig, processed: Path, staging: ReleaseLayout, ranker_spec: dict[str, Any],
                 n_items: int) -> dict[str, Any]:
    """Each item's interactions in the ranker's trend window as of just after the log's last event."""
    window_days = float(ranker_spec.get("trend_window_days", cfg.ranker.trend_window_days))
    trend = ItemTrend.from_parquet(processed / "events")
    as_of = trend.last_ms + 1  # the counts a request right after the last logged event would see
    np.save(staging.trend, trend.as_of(as_of, window_days, n_items))
    return {"window_days": window_days, "as_of_ms": as_of, "cold_start": cfg.ranker.cold_start}
