"""Operating the serving app on a real local Ray: fractional GPUs, autoscaling, version swaps under
load and refusing a broken version (overload and killed replicas: tests/reliability)."""

from __future__ import annotations

import shutil
import time
from collections import Counter

import pytest

from rayrec.artifacts import ArtifactError
from rayrec.config import with_values
from rayrec.index.build import build_release
from rayrec.serve.launch import http_json, start_serving
from tests.serve_clients import ClosedLoop, known_users, running_replicas, wait_for

pytestmark = pytest.mark.integration

APP = "rayrec-ops"


@pytest.fixture(scope="module")
def ops(trained, tmp_path_factory, serve_port):
    from ray import serve

    _, cfg, _, _, _ = trained
    out = tmp_path_factory.mktemp("ops")
    fast = {"target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
            "look_back_period_s": 2}
    cfg = with_values(cfg, {
        "serve.release_dir": str(out / "releases"), "serve.port": serve_port, "serve.app_name": APP,
        "serve.route_prefix": "/ops", "serve.candidates": 30, "serve.feature_store.dir": str(out / "store"),
        "serve.feature_store.num_cpus": 0.01,
        # One logical GPU: 2 x 0.25 ranking + up to 2 x 0.25 retrieval fill it exactly.
        "serve.retrieval": {"num_cpus": 0.1, "num_gpus": 0.25, "max_ongoing_requests": 4, "batch_max_size": 4,
                            "autoscaling": {"min_replicas": 1, "max_replicas": 2, **fast}},
        "serve.ranking": {"num_cpus": 0.1, "num_gpus": 0.25, "num_replicas": 2},
    })  # fmt: skip
    v1 = build_release(cfg)
    base = start_serving(cfg, timeout_s=240)
    yield base, cfg, v1
    serve.delete(APP)
    from rayrec.serve.feature_store import ActorFeatureStore

    ActorFeatureStore.connect(cfg.serve.feature_store, out / "store", None, store_name=APP).shutdown()


def test_replicas_pack_onto_one_gpu_by_fractions(ops):
    import ray
    from ray import serve

    base, _, _ = ops
    _, ready = http_json("GET", f"{base}/readyz")
    assert ready["gpu_ids"] == ["0"] and ready["ranking"]["gpu_ids"] == ["0"]
    assert ready["device"] == "cpu"  # a logical GPU without CUDA: the model falls back to CPU, said in the log
    handle = serve.get_deployment_handle("Ranking", APP)
    seen = {handle.ready.remote().result()["replica"] for _ in range(30)}
    assert len(seen) == 2  # both ranking replicas run, each holding a quarter of GPU 0
    assert ray.available_resources().get("GPU", 0) == pytest.approx(0.25)  # 1 - 0.25 retrieval - 2 x 0.25 ranking


def test_a_replica_that_does_not_fit_the_gpu_waits_and_breaks_nothing(ops, tmp_path):
    import ray
    from ray import serve

    from rayrec.serve.app import build_app
    from rayrec.serve.feature_store import ActorFeatureStore

    base, cfg, v1 = ops
    name = APP + "-oversubscribed"
    wants_half = with_values(cfg, {"serve.app_name": name, "serve.route_prefix": "/over", "serve.use_ranker": False,
                                   "serve.feature_store.dir": str(tmp_path / "store"),
                                   "serve.retrieval": {"num_cpus": 0.1, "num_gpus": 0.5, "num_replicas": 1}})
    # 0.25 GPU is left. serve.run would wait for the app to run; this one cannot until a GPU share frees.
    serve.run_many([serve.RunTarget(build_app(wants_half, v1.name), name=name, route_prefix="/over")],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    try:
        time.sleep(8)
        status = serve.status().applications[name].deployments["Retrieval"]
        assert status.status.value == "UPDATING" and dict(status.replica_states) == {"STARTING": 1}, status
        # The GCS actor table (the State API needs the dashboard, which a local test Ray leaves out).
        pending = ray._private.state.actors(actor_state_name="PENDING_CREATION").values()
        assert any(a["ActorClassName"].endswith(f"{name}:Retrieval") for a in pending), list(pending)
        assert ray.available_resources().get("GPU", 0) == pytest.approx(0.25)  # nothing was taken or lost
        assert http_json("POST", f"{base}/v1/recommend", {"user_id": "unaffected", "k": 3})[0] == 200
    finally:
        serve.delete(name)
        ActorFeatureStore.connect(wants_half.serve.feature_store, tmp_path / "store", None, store_name=name).shutdown()


def test_retrieval_autoscales_up_under_load_and_back_down(ops):
    base, _, _ = ops
    assert running_replicas(APP, "Retrieval") == 1
    with ClosedLoop(base, clients=12) as load:
        wait_for(lambda: running_replicas(APP, "Retrieval") == 2, 90, "a second retrieval replica")
    assert {a.status for a in load.answers} == {200}
    wait_for(lambda: running_replicas(APP, "Retrieval") == 1, 90, "scale-down to one retrieval replica")


def test_a_new_version_rolls_out_under_load_with_zero_failures(ops):
    from ray import serve

    from rayrec.serve.app import build_app

    base, cfg, v1 = ops
    v2 = build_release(cfg)
    with ClosedLoop(base, clients=4, users=known_users(v1)) as load:
        time.sleep(2)
        serve.run(build_app(cfg, v2.name), name=APP, route_prefix="/ops", blocking=False)
        wait_for(lambda: http_json("GET", f"{base}/readyz")[1].get("version") == v2.name, 120, "v2 ready")
        time.sleep(2)
    statuses = Counter(a.status for a in load.answers)
    assert set(statuses) == {200}, statuses
    versions = [a.body["version"] for a in load.answers]
    assert set(versions) == {v1.name, v2.name} and versions[-1] == v2.name
    assert all(a.body["reranked"] for a in load.answers)  # no answer fell back to retrieval order


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(ops):
    from rayrec.serve.app import build_app

    base, cfg, _ = ops
    _, before = http_json("GET", f"{base}/readyz")
    broken = build_release(cfg)
    weights = broken / "ranker" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="weights.pt"):
        build_app(cfg, broken.name)
    shutil.rmtree(broken / "index")
    with pytest.raises(ArtifactError, match="missing"):
        build_app(cfg, broken.name)
    status, body = http_json("POST", f"{base}/v1/recommend", {"user_id": "still-served", "k": 3})
    assert status == 200 and body["version"] == before["version"]
