"""Shared fixtures: paths to the real datasets beside the checkout, one Ray per session, and tiny data
trained once per session with real Ray Train for the integration and reliability tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def read_parquet_in_order(directory: Path):
    """Every Parquet file in ``directory``, concatenated in file-name order (the order training reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(f) for f in sorted(Path(directory).glob("*.parquet"))])


def shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} not present (the real datasets live in ../shared/datasets)")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for integration tests, started once: 2 CPUs like the CI machine, and one logical GPU
    so fractional-GPU placement of Serve replicas is tested for real (nothing runs CUDA code)."""
    import ray

    from rayrec.config import RayConfig
    from rayrec.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, num_gpus=1, object_store_memory_mb=1024))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, ray_local):
    """(root, cfg, ctx, retrieval run, ranker run); the retrieval run had a worker killed mid-epoch."""
    from rayrec.config import load_config
    from rayrec.data.preprocess import run_preprocess
    from rayrec.data.synthetic import generate
    from rayrec.train.trainer import load_context, run_training

    root = tmp_path_factory.mktemp("train")
    generate(root / "raw", scale="tiny", seed=11)
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"source.events={root / 'raw' / 'events'}", f"source.catalog={root / 'raw' / 'catalog.csv'}",
        f"preprocess.out_dir={root / 'processed'}", "preprocess.min_user_events=2", "preprocess.min_item_events=2",
        f"train.out_dir={root / 'runs'}", "train.epochs=3", "train.ranker_epochs=1", "train.batch_size=64",
        "train.max_failures=1", "model.dim=16", "model.hidden=32",
        "search.semantic=false",  # releases build and replicas start without MiniLM unless a test asks for it
    ])  # fmt: skip
    run_preprocess(cfg)
    ctx = load_context(cfg)
    fault = {"epoch": 1, "after_batches": 2, "marker": str(root / "killed"), "epoch_log": str(root / "epochs.log"),
             "delay_s": 5}
    retrieval = run_training(cfg, "two_tower", ctx, fault=fault)
    ranker = run_training(cfg, "ranker", ctx, retrieval_dir=retrieval.bundle)
    return root, cfg, ctx, retrieval, ranker


@pytest.fixture(scope="session")
def serve_port() -> int:
    """One HTTP port for every Serve app in the session: Serve's proxy keeps the port it started on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
