"""Integration tests share the session fixtures of tests/conftest.py (`trained`, `serve_port`) and
`served`: the app on the tiny trained models, started once per test module."""

from __future__ import annotations

import pytest

from rayrec.config import with_values
from rayrec.index.build import build_release
from rayrec.serve.launch import start_serving


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory, serve_port, request):
    """(base URL, config, release folder) of a real local Serve app with one replica per stage; a test
    module's ``SERVE_OVERRIDES`` (config values) apply on top."""
    from ray import serve

    root, cfg, _, _, _ = trained
    out = tmp_path_factory.mktemp("serving")
    small = {"num_cpus": 0.1, "max_ongoing_requests": 32, "num_replicas": 1}
    cfg = with_values(cfg, {
        "serve.release_dir": str(out / "releases"), "serve.port": serve_port, "serve.app_name": "rayrec-test",
        "serve.retrieval": small, "serve.ranking": small, "serve.max_k": 50,
        "serve.feature_store.dir": str(out / "store"), "serve.feature_store.num_cpus": 0.01,
        "serve.candidates": 30, "search.semantic": True, **getattr(request.module, "SERVE_OVERRIDES", {}),
    })  # fmt: skip
    release = build_release(cfg)
    base = start_serving(cfg, timeout_s=240)
    yield base, cfg, release
    serve.delete(cfg.serve.app_name)
    from rayrec.serve.feature_store import ActorFeatureStore

    ActorFeatureStore.connect(cfg.serve.feature_store, out / "store", None, store_name=cfg.serve.app_name).shutdown()


