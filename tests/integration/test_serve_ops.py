"""Operating the serving app on a real local Ray: fractional GPUs, autoscaling, version swaps under
load, refusing a broken version, and overload answered fast with 503."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from rayrec.artifacts import ArtifactError
from rayrec.config import with_values
from rayrec.index.release import build_release
from rayrec.serve.launch import http_json, start_serving

pytestmark = pytest.mark.integration

APP = "rayrec-ops"


class Load:
    """Closed-loop clients posting /v1/recommend until stopped; every answer is recorded."""

    def __init__(self, base: str, clients: int) -> None:
        self.base, self.stop, self.answers = base, threading.Event(), []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                status, body = http_json("POST", f"{self.base}/v1/recommend", {"user_id": f"load-{i}-{n % 7}", "k": 5},
                                         timeout_s=60)
            except OSError as e:  # a dropped connection is a failed request too
                status, body = -1, str(e)
            with self.lock:
                self.answers.append((status, body))
            n += 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def statuses(self) -> Counter:
        return Counter(s for s, _ in self.answers)


def _replicas(deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[APP].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


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
        "serve.ingress": {"num_cpus": 0.1, "num_replicas": 1},
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


def test_retrieval_autoscales_up_under_load_and_back_down(ops):
    base, _, _ = ops
    assert _replicas("Retrieval") == 1
    with Load(base, clients=12) as load:
        _wait_for(lambda: _replicas("Retrieval") == 2, 90, "a second retrieval replica")
    assert set(load.statuses()) == {200}
    _wait_for(lambda: _replicas("Retrieval") == 1, 90, "scale-down to one retrieval replica")


def test_a_new_version_rolls_out_under_load_with_zero_failures(ops):
    from ray import serve

    from rayrec.serve.app import build_app

    base, cfg, v1 = ops
    v2 = build_release(cfg)
    with Load(base, clients=4) as load:
        time.sleep(2)
        serve.run(build_app(cfg, v2.name), name=APP, route_prefix="/ops", blocking=False)
        _wait_for(lambda: http_json("GET", f"{base}/readyz")[1].get("version") == v2.name, 120, "v2 ready")
        time.sleep(2)
    statuses = load.statuses()
    assert set(statuses) == {200}, statuses
    versions = [body["version"] for _, body in load.answers]
    assert set(versions) == {v1.name, v2.name} and versions[-1] == v2.name
    assert all(body["reranked"] for _, body in load.answers)  # no answer fell back to retrieval order


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


def test_overload_is_answered_fast_with_503_and_retry_after(ops, tmp_path):
    import urllib.error
    import urllib.request

    from ray import serve

    from rayrec.serve.app import build_app
    from rayrec.serve.feature_store import ActorFeatureStore

    base, cfg, v1 = ops
    name = APP + "-tight"
    tight = with_values(cfg, {"serve.app_name": name, "serve.route_prefix": "/tight",
                              "serve.feature_store.dir": str(tmp_path / "store"),
                              "serve.retrieval": {"num_cpus": 0.1, "num_replicas": 1, "max_ongoing_requests": 1,
                                                  "max_queued_requests": 1, "batch_max_size": 1},
                              "serve.use_ranker": False})  # fmt: skip
    serve.run(build_app(tight, v1.name), name=name, route_prefix="/tight", blocking=False)
    tight_base = base.replace("/ops", "/tight")
    _wait_for(lambda: http_json("GET", f"{tight_base}/readyz")[0] == 200, 120, "the tight app")

    def one(i: int) -> tuple[int, float, str | None]:
        request = urllib.request.Request(f"{tight_base}/v1/recommend", method="POST",
                                         data=f'{{"user_id": "burst-{i}", "k": 5}}'.encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, time.perf_counter() - started, None
        except urllib.error.HTTPError as e:
            return e.code, time.perf_counter() - started, e.headers.get("Retry-After")

    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(one, range(200)))
    finally:
        serve.delete(name)
        ActorFeatureStore.connect(tight.serve.feature_store, tmp_path / "store", None, store_name=name).shutdown()
    statuses = Counter(s for s, _, _ in answers)
    assert set(statuses) <= {200, 503} and statuses[503] > 0 and statuses[200] > 0, statuses
    rejected = [(t, retry) for s, t, retry in answers if s == 503]
    assert all(retry is not None for _, retry in rejected)
    assert sorted(t for t, _ in rejected)[len(rejected) // 2] < 1.0  # refusals are fast, not timeouts
