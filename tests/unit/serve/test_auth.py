"""API keys: only hashes stored, scopes per route group, per-key token buckets, clear setup errors."""

import json
import stat

import pytest

from rayrec.config import ServeAuthConfig
from rayrec.serve.auth import (ApiGuard, ApiKeyEntry, AuthRejected, AuthSetupError, TokenBucket, add_key,
                               guard_from_config, hash_key, load_entries)


def _guard(rate: float = 100.0, burst: int = 100) -> ApiGuard:
    entries = [ApiKeyEntry(name="shop", sha256=hash_key("read-write"), scopes=["read", "write"]),
               ApiKeyEntry(name="widget", sha256=hash_key("read-only"), scopes=["read"], rate_per_s=1)]
    return ApiGuard(entries, rate, burst)


def _rejected(call) -> AuthRejected:
    with pytest.raises(AuthRejected) as e:
        call()
    return e.value


def test_bearer_and_x_api_key_name_the_caller():
    guard = _guard()
    assert guard.check("read-write", "write") == "shop"
    assert guard.check("read-only", "read") == "widget"


def test_missing_and_unknown_keys_are_401_with_a_reason():
    guard = _guard()
    missing = _rejected(lambda: guard.check(None, "read"))
    assert missing.status == 401 and "Authorization: Bearer" in missing.reason
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert _rejected(lambda: guard.check("nope", "read")).status == 401
    assert _rejected(lambda: guard.check("", "read")).status == 401


def test_a_key_without_the_scope_is_403():
    rejected = _rejected(lambda: _guard().check("read-only", "write"))
    assert rejected.status == 403 and "widget" in rejected.reason and "read" in rejected.reason


def test_rate_limit_is_per_key_and_says_when_to_retry():
    guard = _guard(burst=2)
    guard.check("read-only", "read")
    guard.check("read-only", "read")
    limited = _rejected(lambda: guard.check("read-only", "read"))
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert guard.check("read-write", "read") == "shop"  # another key's bucket is untouched


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate_per_s=2, burst=1)
    t = bucket.updated
    assert bucket.take(t) == 0
    assert bucket.take(t) == pytest.approx(0.5)
    assert bucket.take(t + 0.5) == 0


def test_add_key_stores_only_a_hash_in_a_private_file(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "shop", ["read"])
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(AuthSetupError, match="already has a key named 'shop'"):
        add_key(path, "shop", ["read"])
    guard = guard_from_config(ServeAuthConfig(required=True, keys_file=str(path), keys_env="RAYREC_TEST_NO_SUCH_VAR"))
    assert guard.check(key, "read") == "shop"


def test_setup_errors_name_the_source_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(AuthSetupError, match="does not exist.*rayrec api-key"):
        load_entries(str(tmp_path / "missing.json"), "X")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "a", "sha256": "not-hex", "scopes": ["read"]}]))
    with pytest.raises(AuthSetupError, match="sha256"):
        load_entries(str(bad), "X")
    monkeypatch.setenv("RAYREC_TEST_KEYS", json.dumps([{"name": "a", "sha256": "0" * 64, "scopes": ["admin"]}]))
    with pytest.raises(AuthSetupError, match=r"\$RAYREC_TEST_KEYS.*scopes"):
        load_entries(None, "RAYREC_TEST_KEYS")
    with pytest.raises(AuthSetupError, match="no keys are configured"):
        guard_from_config(ServeAuthConfig(required=True, keys_env="RAYREC_TEST_NO_SUCH_VAR"))
    assert guard_from_config(ServeAuthConfig()) is None
