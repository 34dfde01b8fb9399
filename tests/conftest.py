"""Shared fixtures: paths to the real datasets beside the checkout, and one Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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
