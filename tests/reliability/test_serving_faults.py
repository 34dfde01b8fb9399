"""Faults in the serving path on a real local Ray, with figures: a killed Retrieval replica and a
killed Ranking replica under closed-loop load, an open-loop overload at about 5x capacity, and a
feature-store shard killed (and restarted by Ray) while events are posted.

Each test records what clients saw (requests, failures, failures left after one client retry,
latency during the fault, time until the replica was back); see ``figures.record``.

Health checks are shortened (``serve.<stage>.health_check_period_s`` 1 s), so "replica back" is
about one period plus a replica start. While no ranking replica answers, batches wait at most
``serve.ranking_timeout_s`` and answer in retrieval order (``reranked: false``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from rayrec.config import with_values
from rayrec.index.build import build_release
from rayrec.serve.launch import http_json, start_serving
from tests.reliability.figures import ms, percentile, record
from tests.serve_clients import CLIENT_TIMEOUT_S, ClosedLoop, known_users, post, running_replicas, wait_for

pytestmark = pytest.mark.integration

APP = "rayrec-faults"
PREFIX = "/faults"
FAST_HEALTH_CHECKS = {"health_check_period_s": 1, "health_check_timeout_s": 5}


# --- Ray / Serve helpers -----------------------------------------------------------------------------


def _replica_actors(app: str, deployment: str) -> dict[str, dict]:
    """ALIVE replica actors of one deployment, from the GCS actor table (Ray's State API needs the
    dashboard, which the test Ray leaves out): actor id -> info."""
    import ray

    cls = f"ServeReplica:{app}:{deployment}"
    return {aid: info for aid, info in ray._private.state.actors(actor_state_name="ALIVE").items()
            if info["ActorClassName"] == cls}


def _kill_replica(app: str, deployment: str) -> tuple[str, float]:
    """Kill the one replica of ``deployment`` for good (Serve, not Ray, must replace it); returns
    (its actor id, time.monotonic() of the kill)."""
    import ray

    actors = _replica_actors(app, deployment)
    assert len(actors) == 1, actors
    actor_id, info = next(iter(actors.items()))
    handle = ray.get_actor(info["Name"], namespace="serve")
    killed_at = time.monotonic()
    ray.kill(handle, no_restart=True)
    return actor_id, killed_at


def _replaced(app: str, deployment: str, killed: str) -> bool:
    alive = _replica_actors(app, deployment)
    return killed not in alive and len(alive) == 1 and running_replicas(app, deployment) == 1


@pytest.fixture(scope="module")
def faults(trained, tmp_path_factory, serve_port):
    from ray import serve

    from rayrec.serve.feature_store import ActorFeatureStore

    _, cfg, _, _, _ = trained
    out = tmp_path_factory.mktemp("faults")
    cfg = with_values(cfg, {
        "serve.release_dir": str(out / "releases"), "serve.port": serve_port, "serve.app_name": APP,
        "serve.route_prefix": PREFIX, "serve.candidates": 30, "serve.use_ranker": True,
        "serve.feature_store.dir": str(out / "store"), "serve.feature_store.num_cpus": 0.01,
        "serve.retrieval": {"num_cpus": 0.1, "num_replicas": 1, "max_ongoing_requests": 8, "batch_max_size": 4,
                            **FAST_HEALTH_CHECKS},
        "serve.ranking": {"num_cpus": 0.1, "num_replicas": 1, **FAST_HEALTH_CHECKS},
    })  # fmt: skip
    release = build_release(cfg)
    base = start_serving(cfg, timeout_s=240)
    yield base, cfg, release, out
    serve.delete(APP)
    ActorFeatureStore.connect(cfg.serve.feature_store, out / "store", None, store_name=APP).shutdown()


def _kill_under_load(faults, tmp_path: Path, deployment: str, test: str) -> dict:
    base, _, release, _ = faults
    assert http_json("POST", f"{base}/v1/recommend", {"user_id": "before", "k": 5})[0] == 200
    with ClosedLoop(base, clients=4, users=known_users(release)) as load:
        time.sleep(4)
        killed, killed_at = _kill_replica(APP, deployment)
        wait_for(lambda: _replaced(APP, deployment, killed), 90, f"a new {deployment} replica")
        back_s = time.monotonic() - killed_at
        time.sleep(max(0.0, 15 - 4 - back_s))  # the run lasts ~15 s whatever the recovery took
    answers = load.answers
    recovered_at = killed_at + back_s
    during = [a for a in answers if killed_at - 1 <= a.started <= recovered_at]
    failed = [a for a in answers if a.status != 200]
    still_failed = [a for a in failed if a.retry_status != 200]
    status, after = http_json("POST", f"{base}/v1/recommend", {"user_id": "after", "k": 5})
    figures = record(test, tmp_path, {
        "fault": f"ray.kill({deployment} replica, no_restart=True) under 4 closed-loop clients",
        "requests": len(answers), "failed": len(failed), "failed_after_one_retry": len(still_failed),
        "first_try_statuses": dict(Counter(a.status for a in answers)),
        "requests_during_fault": len(during),
        "p50_ms_during_fault": ms(percentile([a.latency_s for a in during], 50)),
        "p99_ms_during_fault": ms(percentile([a.latency_s for a in during], 99)),
        "p50_ms_all": ms(percentile([a.latency_s for a in answers], 50)),
        "replica_back_s": round(back_s, 2),
        "reranked_share": round(sum(1 for a in answers if isinstance(a.body, dict) and a.body.get("reranked"))
                                / max(1, len(answers)), 3),
    })  # fmt: skip
    assert len(answers) > 20, figures  # the load really ran through the fault
    assert not still_failed, [(a.status, a.retry_status, a.body) for a in still_failed]
    assert len(failed) <= 4 * 8, figures  # bounded: at most what was in flight or queued at the kill
    assert running_replicas(APP, deployment) == 1 and status == 200, (status, after)
    return figures


def test_a_killed_retrieval_replica_is_replaced_and_retries_succeed(faults, tmp_path):
    _kill_under_load(faults, tmp_path, "Retrieval", "retrieval_replica_killed")


def test_a_killed_ranking_replica_is_replaced_and_retries_succeed(faults, tmp_path):
    base, _, release, _ = faults
    _kill_under_load(faults, tmp_path, "Ranking", "ranking_replica_killed")
    status, body = http_json("POST", f"{base}/v1/recommend", {"user_id": known_users(release)[0], "k": 5})
    assert status == 200 and body["reranked"], body  # the new ranking replica ranks again


# --- overload --------------------------------------------------------------------------------------------


async def _open_loop(url: str, rate: float, duration_s: float, timeout_s: float) -> list[tuple[int, float, str | None]]:
    """Requests sent at ``rate``/s on a fixed schedule, whatever the answers: (status, latency,
    Retry-After); status -1 for a client timeout or dropped connection."""
    import aiohttp

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, float, str | None]:
        started = time.perf_counter()
        try:
            async with session.post(url, json={"user_id": f"flood-{i % 50}", "k": 5}) as r:
                await r.read()
                return r.status, time.perf_counter() - started, r.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return -1, time.perf_counter() - started, None

    connector = aiohttp.TCPConnector(limit=0)  # no client-side queue: open loop means every request goes out
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        tasks = []
        start = time.perf_counter()
        n = int(rate * duration_s)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, i)))
        return list(await asyncio.gather(*tasks))


def test_overload_at_5x_capacity_is_refused_fast_and_nothing_hangs(faults, tmp_path):
    from ray import serve

    from rayrec.serve.app import build_app
    from rayrec.serve.feature_store import ActorFeatureStore

    base, cfg, release, _ = faults
    name = APP + "-tight"
    tight = with_values(cfg, {"serve.app_name": name, "serve.route_prefix": "/faults-tight",
                              "serve.feature_store.dir": str(tmp_path / "store"), "serve.use_ranker": False,
                              "serve.retrieval": {"num_cpus": 0.1, "num_replicas": 1, "max_ongoing_requests": 1,
                                                  "max_queued_requests": 2, "batch_max_size": 1}})  # fmt: skip
    serve.run(build_app(tight, release.name), name=name, route_prefix="/faults-tight", blocking=False)
    tight_base = base.replace(PREFIX, "/faults-tight")
    try:
        wait_for(lambda: http_json("GET", f"{tight_base}/readyz")[0] == 200, 120, "the tight app")
        # Capacity, roughly: a closed loop of 2 clients (no more than the queue admits) for 4 s.
        with ClosedLoop(tight_base, clients=2) as probe:
            time.sleep(4)
        ok = [a for a in probe.answers if a.status == 200]
        capacity = len(ok) / 4.0
        assert capacity > 0, Counter(a.status for a in probe.answers)
        rate = min(5 * capacity, 400.0)  # 5x; capped so the client itself keeps its schedule on 2 cores
        duration_s = 8.0
        started = time.monotonic()
        answers = asyncio.run(_open_loop(f"{tight_base}/v1/recommend", rate, duration_s, timeout_s=30))
        wall_s = time.monotonic() - started
        assert http_json("POST", f"{tight_base}/v1/recommend", {"user_id": "after-flood", "k": 5})[0] == 200
    finally:
        serve.delete(name)
        ActorFeatureStore.connect(tight.serve.feature_store, tmp_path / "store", None, store_name=name).shutdown()

    statuses = Counter(s for s, _, _ in answers)
    accepted = [t for s, t, _ in answers if s == 200]
    refused = [(t, retry) for s, t, retry in answers if s in (503, 429)]
    timeouts = statuses.get(-1, 0)
    figures = record("overload_5x", tmp_path, {
        "capacity_rps": round(capacity, 1), "offered_rps": round(rate, 1), "duration_s": duration_s,
        "requests": len(answers), "statuses": dict(statuses), "failed": len(answers) - len(accepted),
        "client_timeouts": timeouts, "accepted_rps": round(len(accepted) / wall_s, 1),
        "accepted_p50_ms": ms(percentile(accepted, 50)), "accepted_p99_ms": ms(percentile(accepted, 99)),
        "refused_p50_ms": ms(percentile([t for t, _ in refused], 50)),
        "refused_p99_ms": ms(percentile([t for t, _ in refused], 99)),
        "refused_without_retry_after": sum(1 for _, retry in refused if retry is None),
    })  # fmt: skip
    assert set(statuses) <= {200, 503, 429}, figures  # no 500s, no dropped connections, no timeouts
    assert timeouts == 0, figures
    assert refused and accepted, figures  # overloaded for real, and still serving
    assert figures["refused_without_retry_after"] == 0, figures
    assert percentile(accepted, 99) < 5.0, figures  # accepted requests do not queue without bound
    refused_p50 = percentile([t for t, _ in refused], 50)
    assert refused_p50 < 1.0 and refused_p50 <= percentile(accepted, 50), figures  # refusals are fast


# --- feature store -----------------------------------------------------------------------------------------


def test_acknowledged_events_survive_a_feature_store_shard_restart(faults, tmp_path):
    import ray

    from rayrec.serve.feature_store import ActorFeatureStore, shard_of

    base, cfg, _, out = faults
    store = ActorFeatureStore.connect(cfg.serve.feature_store, out / "store", None, store_name=APP)
    shards = len(store.actors)
    users = [f"durable-{i}" for i in range(24)]
    now = int(time.time() * 1000) - 3_600_000
    # 24 users x 12 events in requests of 2 (one user each): 144 requests, each event unique.
    requests = [[{"user_id": u, "item_id": f"evt-{u}-{j}", "event_type": "click", "ts_ms": now + j},
                 {"user_id": u, "item_id": f"evt-{u}-{j + 1}", "event_type": "click", "ts_ms": now + j + 1}]
                for j in range(0, 12, 2) for u in users]
    victim = shard_of(users[0], shards)
    old_pid = store.stats_sync()[victim].pid
    acknowledged: set[tuple[str, str, int]] = set()
    unacknowledged: set[tuple[str, str, int]] = set()
    latencies: list[tuple[float, float]] = []
    failed = still_failed = 0
    lock = threading.Lock()
    progress = iter(range(len(requests)))

    def client() -> None:
        nonlocal failed, still_failed
        for i in progress:  # shared iterator: each request is sent by one client
            events = requests[i]
            keys = {(e["user_id"], e["item_id"], e["ts_ms"]) for e in events}
            started = time.monotonic()
            status, body, latency = post(f"{base}/v1/events", {"events": events})
            ok = status == 200 and body.get("accepted") == len(events)
            retried_ok = None
            if not ok:  # one client retry; the store ignores an exact repeat of an event
                time.sleep(1.0)
                status, body, _ = post(f"{base}/v1/events", {"events": events})
                retried_ok = status == 200 and body.get("accepted") in (0, 1, 2)
            with lock:
                latencies.append((started, latency))
                if not ok:
                    failed += 1
                    still_failed += 0 if retried_ok else 1
                (acknowledged if ok or retried_ok else unacknowledged).update(keys)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(latencies) >= len(requests) // 3, 60, "a third of the events")
    killed_at = time.monotonic()
    ray.kill(store.actors[victim], no_restart=False)  # Ray restarts it; it recovers from its WAL
    back_s = wait_for(lambda: store.stats_sync()[victim].pid != old_pid, 60, "the shard to restart")
    for t in threads:
        t.join(timeout=2 * CLIENT_TIMEOUT_S + 5)
    assert not any(t.is_alive() for t in threads), "an events request hung"

    histories = store.histories_sync(users)
    stored = {(u, item, ts) for u, h in zip(users, histories) for item, ts in zip(h.item_ids, h.ts_ms)}
    during = [lat for started, lat in latencies if killed_at - 1 <= started <= killed_at + back_s + 1]
    figures = record("feature_store_shard_restart", tmp_path, {
        "fault": f"ray.kill(feature-store shard {victim}/{shards}, no_restart=False) while 3 clients post events",
        "requests": len(latencies), "events_sent": 2 * len(requests), "failed": failed,
        "failed_after_one_retry": still_failed, "events_acknowledged": len(acknowledged),
        "acknowledged_events_stored": len(acknowledged & stored), "events_stored": len(stored),
        "requests_during_fault": len(during), "p50_ms_during_fault": ms(percentile(during, 50)),
        "p99_ms_during_fault": ms(percentile(during, 99)), "shard_back_s": round(back_s, 2),
    })  # fmt: skip
    assert len(acknowledged) + len(unacknowledged) == 2 * len(requests)
    assert acknowledged - stored == set(), figures  # every acknowledged event is there, exactly
    assert stored <= acknowledged | unacknowledged and len(stored) == len(acknowledged | (stored & unacknowledged))
    assert still_failed == 0 and len(acknowledged) == 2 * len(requests), figures
    assert store.stats_sync()[victim].pid != old_pid  # the fault really happened
