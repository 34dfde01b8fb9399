"""The HTTP API under API keys, rate limits and body limits, bound to loopback, and fuzzed: no
malformed request gets a 5xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayrec.config import with_values
from rayrec.index.build import build_release
from rayrec.serve.auth import add_key
from rayrec.serve.launch import http_json, start_serving

pytestmark = pytest.mark.integration

APP, PREFIX = "rayrec-secure", "/secure"


@pytest.fixture(scope="module")
def secured(trained, tmp_path_factory, serve_port):
    from ray import serve

    from rayrec.serve.feature_store import ActorFeatureStore

    _, cfg, _, _, _ = trained
    out = tmp_path_factory.mktemp("secure")
    keys = out / "keys.json"
    shop, widget = add_key(keys, "shop", ["read", "write"]), add_key(keys, "widget", ["read"], rate_per_s=0.2)
    cfg = with_values(cfg, {
        "serve.release_dir": str(out / "releases"), "serve.port": serve_port, "serve.app_name": APP,
        "serve.route_prefix": PREFIX, "serve.use_ranker": False, "serve.max_body_bytes": 4096,
        "serve.feature_store.dir": str(out / "store"), "serve.feature_store.num_cpus": 0.01,
        "serve.retrieval": {"num_cpus": 0.1, "num_replicas": 1},
        "serve.auth": {"required": True, "keys_file": str(keys), "rate_per_s": 1000, "burst": 5},
    })  # fmt: skip
    build_release(cfg)
    base = start_serving(cfg, timeout_s=240)
    yield base, shop, widget
    serve.delete(APP)
    ActorFeatureStore.connect(cfg.serve.feature_store, out / "store", None, store_name=APP).shutdown()


def _events(user: str) -> dict:
    return {"events": [{"user_id": user, "item_id": "I000001", "event_type": "click"}]}


def test_keys_are_required_per_route_group(secured):
    base, shop, widget = secured
    assert http_json("GET", f"{base}/healthz")[0] == 200  # probes need no key
    status, body = http_json("POST", f"{base}/v1/recommend", {"user_id": "u1", "k": 3})
    assert status == 401 and "Bearer" in body["detail"]
    assert http_json("POST", f"{base}/v1/recommend", {"user_id": "u1", "k": 3},
                     headers={"Authorization": "Bearer rr_wrong"})[0] == 401
    assert http_json("POST", f"{base}/v1/recommend", {"user_id": "u1", "k": 3},
                     headers={"Authorization": f"Basic {shop}"})[0] == 401  # not a bearer key
    assert http_json("POST", f"{base}/v1/recommend", {"user_id": "u1", "k": 3},
                     headers={"Authorization": f"Bearer {shop}"})[0] == 200
    assert http_json("POST", f"{base}/v1/events", _events("u1"), headers={"X-API-Key": shop}) == (200, {"accepted": 1})
    status, body = http_json("POST", f"{base}/v1/events", _events("u1"), headers={"X-API-Key": widget})
    assert status == 403 and "widget" in body["detail"]
    assert http_json("POST", f"{base}/v1/search", {"query": "shoes"})[0] == 401
    assert http_json("POST", f"{base}/v1/search", {"query": "shoes"}, headers={"X-API-Key": widget})[0] == 200


def test_a_key_over_its_rate_gets_429_with_retry_after(secured):
    base, shop, widget = secured
    statuses = []
    for _ in range(10):  # widget: a burst of 5, then 0.2 requests/s
        status, _ = http_json("POST", f"{base}/v1/recommend", {"user_id": "u2", "k": 3}, headers={"X-API-Key": widget})
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200} and len(statuses) <= 6, statuses
    request = urllib.request.Request(f"{base}/v1/recommend", data=b'{"user_id": "u2", "k": 3}', method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": widget})
    with pytest.raises(urllib.error.HTTPError) as limited:
        urllib.request.urlopen(request, timeout=30)
    assert limited.value.code == 429 and int(limited.value.headers["Retry-After"]) >= 1
    assert http_json("POST", f"{base}/v1/recommend", {"user_id": "u2", "k": 3},
                     headers={"X-API-Key": shop})[0] == 200  # one key's limit is not another's


def test_a_body_over_the_limit_is_413(secured):
    base, shop, _ = secured
    events = {"events": [{"user_id": f"user-{i}", "item_id": "I000001", "event_type": "view"} for i in range(200)]}
    status, body = http_json("POST", f"{base}/v1/events", events, headers={"X-API-Key": shop})
    assert status == 413 and "detail" in body


def test_http_listens_on_loopback_only(secured, serve_port):
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == serve_port}
    assert listening and listening <= {"127.0.0.1", "::1"}, listening


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=4), max_leaves=12)
recommend_like = st.fixed_dictionaries({}, optional={"user_id": json_values, "k": json_values, "filters": json_values,
                                                     "exclude_purchased": json_values, "context": json_values})
search_like = st.fixed_dictionaries({}, optional={"query": st.text(max_size=300) | json_values, "user_id": json_values,
                                                  "k": json_values, "filters": json_values})
event_like = st.fixed_dictionaries({}, optional={"events": st.lists(st.fixed_dictionaries({}, optional={
    "user_id": json_values, "item_id": json_values, "event_type": json_values, "ts_ms": json_values}), max_size=3)
    | json_values})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(["/v1/recommend", "/v1/events", "/v1/search", "/v1/items/{x}/similar", "/v1/nowhere"]),
       method=st.sampled_from(["POST", "GET", "PUT"]), body=st.one_of(recommend_like, event_like, search_like,
                                                                      json_values),
       raw=st.one_of(st.none(), st.binary(max_size=64)), item=st.text(min_size=1, max_size=20),
       k=st.one_of(st.none(), st.text(max_size=8)), keyed=st.booleans())
def test_fuzzed_requests_never_get_a_5xx(secured, route, method, body, raw, item, k, keyed):
    base, shop, _ = secured
    url = base + route.replace("{x}", urllib.request.quote(item, safe=""))
    if k is not None:
        url += "?k=" + urllib.request.quote(k, safe="")
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"X-API-Key": shop} if keyed else {})}
    request = urllib.request.Request(url, data=data if method != "GET" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status < 500, (method, url, data[:200], status)
