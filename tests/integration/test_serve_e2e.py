"""The serving application over real HTTP against a real local Ray Serve, on the tiny trained models."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayrec.release import ReleaseLayout
from rayrec.serve.feature_store import UserHistory
from rayrec.serve.launch import http_json
from rayrec.serve.retrieval import RecommendQuery, RetrievalCore

pytestmark = pytest.mark.integration


def _users_and_items(release):
    histories = pq.read_table(ReleaseLayout(release).histories).to_pylist()
    items = pq.read_table(ReleaseLayout(release).items).to_pylist()
    return histories, items


def test_health_ready_and_openapi(served):
    base, _, release = served
    assert http_json("GET", f"{base}/healthz") == (200, {"status": "alive"})
    status, ready = http_json("GET", f"{base}/readyz")
    assert status == 200 and ready["ready"] and ready["version"] == release.name
    with urllib.request.urlopen(f"{base}/openapi.json") as r:
        paths = json.loads(r.read())["paths"]
    assert {"/v1/recommend", "/v1/events", "/v1/items/{item_id}/similar", "/healthz", "/readyz"} <= set(paths)


def test_recommend_ranks_k_items_from_one_release(served):
    base, cfg, release = served
    histories, _ = _users_and_items(release)
    user = histories[0]["user_id"]
    status, body = http_json("POST", f"{base}/v1/recommend", {"user_id": user, "k": 7})
    assert status == 200, body
    assert len(body["items"]) == 7 and body["version"] == release.name and body["reranked"]
    assert not body["cold_start"]
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert len({it["item_id"] for it in body["items"]}) == 7


def _core_and_first_user(release):
    """A retrieval core on ``release`` and its first stored user: (core, user row, that user's history)."""
    h = _users_and_items(release)[0][0]
    history = UserHistory(item_ids=tuple(h["item_id"]), stages=tuple(h["stage"]), ts_ms=tuple(h["ts_ms"]))
    return RetrievalCore(release), h, history


def test_candidates_are_faiss_hits_plus_trending_items_faiss_missed(served):
    _, cfg, release = served
    core, h, history = _core_and_first_user(release)
    query = RecommendQuery(user_id=h["user_id"], k=7, exclude_purchased=False)
    plain = core.candidates([query], [history], max(h["ts_ms"]), cfg.serve.candidates)
    both = core.candidates([query], [history], max(h["ts_ms"]), cfg.serve.candidates, n_trending=20)
    n = cfg.serve.candidates
    assert both.cand.shape == (1, n + 20) and (both.cand[:, :n] == plain.cand).all()
    extra = both.cand[0, n:]
    extra = extra[extra >= 0]
    trend = np.load(ReleaseLayout(release).trend)
    assert len(extra) > 0 and not np.isin(extra, plain.cand).any() and (trend[extra] > 0).all()
    assert list(extra) == sorted(extra, key=lambda i: -trend[i])  # most-counted first
    assert np.isfinite(both.retrieval_score[0, n:n + len(extra)]).all()


def test_the_ranking_replica_adds_the_rankers_trend_boost(served):
    import dataclasses

    from rayrec.serve.ranking import RankingCore

    _, cfg, release = served
    core, h, history = _core_and_first_user(release)
    query = RecommendQuery(user_id=h["user_id"], k=7)
    batch = core.candidates([query], [history], max(h["ts_ms"]), cfg.serve.candidates, n_trending=20)
    payload = batch.ranking_payload(core.version)
    plain = RankingCore(release, cfg.ranker.purchase_weight, trend_boost=0.0).score(payload)  # serve.trend_boost
    ranking = RankingCore(release, cfg.ranker.purchase_weight)
    ranking.model.spec = dataclasses.replace(ranking.model.spec, trend_boost=2.0)
    valid = batch.cand >= 0
    counts = np.load(ReleaseLayout(release).trend)[batch.cand[valid]]
    lift = 2.0 * np.log1p(counts) / float(ranking.model.pop_scale)
    assert (counts > 0).any() and np.allclose(ranking.score(payload)[valid] - plain[valid], lift, atol=1e-5)


def test_the_ranking_replica_adds_the_als_score_of_the_requests_history(served):
    import dataclasses

    import torch

    from rayrec.models.collaborative import collaborative_scores
    from rayrec.serve.ranking import RankingCore

    _, cfg, release = served
    core, h, history = _core_and_first_user(release)
    batch = core.candidates([RecommendQuery(user_id=h["user_id"], k=7)], [history], max(h["ts_ms"]),
                            cfg.serve.candidates, n_trending=20)
    payload = batch.ranking_payload(core.version)
    ranking = RankingCore(release, cfg.ranker.purchase_weight)
    model = ranking.model
    assert model.spec.collaborative_factors > 0 and model.collaborative_items.abs().sum() > 0  # fitted, released
    scores = {}
    for boost in (0.0, 0.5):
        model.spec = dataclasses.replace(model.spec, collaborative_boost=boost)
        scores[boost] = ranking.score(payload)
    valid = batch.cand >= 0
    als = collaborative_scores(model.collaborative_items, model.collaborative_gram,
                               torch.as_tensor(payload["hist_items"]), torch.as_tensor(batch.cand).clamp(min=0)).numpy()
    assert not np.allclose(als[valid], 0.0)
    assert np.allclose(scores[0.5][valid] - scores[0.0][valid], 0.5 * als[valid], atol=1e-5)


def test_a_batch_of_cold_starts_skips_the_ranking_hop(served):
    _, cfg, release = served
    core, h, warm = _core_and_first_user(release)
    cold = UserHistory(item_ids=(), stages=(), ts_ms=())
    query = RecommendQuery(user_id="someone", k=5)
    now = max(h["ts_ms"])
    assert not core.needs_ranking(core.candidates([query, query], [cold, cold], now, cfg.serve.candidates))
    assert core.needs_ranking(core.candidates([query, query], [cold, warm], now, cfg.serve.candidates))


def test_unknown_user_gets_the_trending_items_in_trend_order(served):
    base, _, release = served
    status, body = http_json("POST", f"{base}/v1/recommend", {"user_id": "never-seen-before", "k": 5})
    assert status == 200 and body["cold_start"] and len(body["items"]) == 5 and not body["reranked"]
    trend = np.load(ReleaseLayout(release).trend)
    _, items = _users_and_items(release)
    idx_of = {it["item_id"]: it["item_idx"] for it in items}
    got = [idx_of[it["item_id"]] for it in body["items"]]
    top = sorted((i for i in idx_of.values() if trend[i] > 0), key=lambda i: (-trend[i], i))[:5]
    assert got == top and [it["score"] for it in body["items"]] == [float(trend[i]) for i in top]


def test_events_change_the_next_recommendation_at_once(served):
    base, _, release = served
    _, items = _users_and_items(release)
    user = "fresh-user-events"
    _, before = http_json("POST", f"{base}/v1/recommend", {"user_id": user, "k": 10})
    category = items[0]["category"].split(" > ")[0]
    clicked = [it["item_id"] for it in items if it["category"].startswith(category)][:5]
    events = [{"user_id": user, "item_id": i, "event_type": "click"} for i in clicked]
    assert http_json("POST", f"{base}/v1/events", {"events": events}) == (200, {"accepted": len(events)})
    _, after = http_json("POST", f"{base}/v1/recommend", {"user_id": user, "k": 10})
    assert before["cold_start"] and not after["cold_start"]
    assert [it["item_id"] for it in after["items"]] != [it["item_id"] for it in before["items"]]


def test_purchased_items_are_excluded_and_filters_return_full_k(served):
    base, _, release = served
    _, items = _users_and_items(release)
    user = "buyer-1"
    _, first = http_json("POST", f"{base}/v1/recommend", {"user_id": user, "k": 3})
    bought = first["items"][0]["item_id"]
    http_json("POST", f"{base}/v1/events", {"events": [{"user_id": user, "item_id": bought, "event_type": "purchase"}]})
    _, after = http_json("POST", f"{base}/v1/recommend", {"user_id": user, "k": 20})
    assert bought not in {it["item_id"] for it in after["items"]}
    category = items[0]["category"].split(" > ")[0]
    matching = sum(it["category"].startswith(category) for it in items)
    k = min(5, matching)
    status, body = http_json("POST", f"{base}/v1/recommend",
                             {"user_id": user, "k": k, "filters": {"category": category}})
    assert status == 200 and len(body["items"]) == k
    assert all(it["category"].startswith(category) for it in body["items"])
    prices = sorted(it["price"] for it in items if it["price"] is not None)
    lo, hi = prices[len(prices) // 4], prices[len(prices) // 2]
    _, body = http_json("POST", f"{base}/v1/recommend",
                        {"user_id": user, "k": 5, "filters": {"price_min": lo, "price_max": hi}})
    assert len(body["items"]) == 5 and all(lo <= it["price"] <= hi for it in body["items"])


def test_similar_items_and_unknown_item(served):
    base, _, release = served
    _, items = _users_and_items(release)
    item = items[0]["item_id"]
    status, body = http_json("GET", f"{base}/v1/items/{item}/similar?k=4")
    assert status == 200 and len(body["items"]) == 4 and item not in {it["item_id"] for it in body["items"]}
    status, body = http_json("GET", f"{base}/v1/items/no-such-item/similar")
    assert status == 404 and "no-such-item" in body["detail"]


@pytest.mark.parametrize("body, field", [
    ({"user_id": "u", "k": 0}, "k"),
    ({"user_id": "u", "k": 51}, "k"),
    ({"user_id": "", "k": 5}, "user_id"),
    ({"k": 5}, "user_id"),
    ({"user_id": "u", "k": 5, "filters": {"price_min": 10, "price_max": 1}}, "filters"),
    ({"user_id": "u", "k": 5, "filters": {"price_min": -1}}, "price_min"),
    ({"user_id": "u", "k": 5, "surprise": 1}, "surprise"),
])  # fmt: skip
def test_bad_recommend_requests_get_422_naming_the_field(served, body, field):
    base, _, _ = served
    status, answer = http_json("POST", f"{base}/v1/recommend", body)
    assert status == 422 and field in json.dumps(answer)


def _raw_post(url: str, payload: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_non_finite_numbers_and_broken_json_are_422_without_a_traceback(served):
    base, _, _ = served
    for payload in (b'{"user_id": "u", "k": 5, "filters": {"price_max": NaN}}',
                    b'{"user_id": "u", "k": 5, "filters": {"price_min": Infinity}}', b'{"user_id": "u", "k": '):
        status, answer = _raw_post(f"{base}/v1/recommend", payload)
        assert status == 422 and "Traceback" not in json.dumps(answer)


def test_bad_events_get_422(served):
    base, _, _ = served
    ok = {"user_id": "u", "item_id": "i", "event_type": "click"}
    for events, field in (([{**ok, "event_type": "teleport"}], "event_type"), ([], "events"),
                          ([{**ok, "ts_ms": 10**15}], "ts_ms"), ([{**ok, "item_id": ""}], "item_id"),
                          ([ok] * 501, "events")):
        status, answer = http_json("POST", f"{base}/v1/events", {"events": events})
        assert status == 422 and field in json.dumps(answer), (field, answer)


def test_loadtest_drives_the_app_and_counts_its_replicas(served, tmp_path):
    from rayrec.loadtest.contract import RequestMix
    from rayrec.loadtest.runner import LoadtestSettings, run_loadtest

    base, cfg, release = served
    catalog = pq.read_table(ReleaseLayout(release).items, columns=["item_id", "title"])
    items, queries = tmp_path / "items.txt", tmp_path / "queries.txt"
    items.write_text("\n".join(catalog["item_id"].to_pylist()[:20]))
    queries.write_text("\n".join(str(t).split()[-1] for t in catalog["title"].to_pylist()[:20]))
    settings = LoadtestSettings(url=base, rate=10, max_concurrency=4, warmup_s=1, duration_s=4,
                                mix=RequestMix(users_pool=50, unknown_fraction=0.2, k=5, similar_fraction=0.3,
                                               items_file=items, search_fraction=0.3, queries_file=queries),
                                replicas_every_s=1, app_name=cfg.serve.app_name)
    report = run_loadtest(settings, tmp_path / "out")
    assert report.requests_measured > 0 and report.errors_by_status == {}, report.errors_by_status
    assert set(report.requests_by_name) == {"recommend", "similar", "search"}
    assert report.latency is not None and report.latency.p99_ms >= report.latency.p50_ms > 0
    assert report.replicas, report.replicas_note  # read from this Ray's Serve while the load ran
    assert {s.running.get("Retrieval") for s in report.replicas} == {1}
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "report.png").is_file()


def test_stage_latencies_and_serve_metrics_reach_prometheus(served):
    """Ray's metrics agent exports Serve's own metrics and ours in Prometheus text format."""
    import time

    import ray

    base, _, _ = served
    for i in range(5):
        assert http_json("POST", f"{base}/v1/recommend", {"user_id": f"metrics-{i}", "k": 3})[0] == 200
    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = ("ray_rayrec_stage_latency_ms_bucket", "ray_rayrec_candidates_bucket", "ray_rayrec_cold_starts",
              "ray_rayrec_retrieval_batch_size_bucket", "ray_serve_deployment_request_counter",
              "ray_serve_deployment_processing_latency_ms_bucket")
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # exported every few seconds, not at once
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, missing
    stages = {line.split('stage="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("ray_rayrec_stage_latency_ms_bucket") and 'stage="' in line}
    assert stages >= {"feature_store", "retrieval", "ranking"}, stages
