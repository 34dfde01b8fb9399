"""API keys and per-key rate limits for the HTTP endpoints.

Keys live outside the repository: a JSON file (``serve.auth.keys_file``) or an environment variable
(``serve.auth.keys_env``), holding ``[{"name", "sha256", "scopes", "rate_per_s"?}]``. Only the
SHA-256 of a key is stored (``rayrec api-key`` makes one and prints it once); a presented key is
hashed and compared with every stored hash in constant time. Scopes are route groups: ``read``
(recommend, similar items, search) and ``write`` (events). Callers send ``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``.

Rate limits are token buckets per key *per replica*: a global limit would cost every request a
hop to a shared actor, which is the whole CPU budget on small machines. With R retrieval replicas a
key can reach R × its rate; size ``rate_per_s`` for that.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from rayrec.config import ServeAuthConfig

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")


class AuthSetupError(ValueError):
    """The key file or variable is missing or malformed; the message says which and how to fix it."""


class AuthRejected(Exception):
    """A request the guard refuses: status (401, 403, 429), reason and headers for the answer."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


class ApiKeyEntry(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the key; never the key.")
    scopes: list[Scope] = Field(min_length=1)
    rate_per_s: float | None = Field(None, gt=0, description="This key's limit (null: serve.auth.rate_per_s).")


_ENTRIES = TypeAdapter(list[ApiKeyEntry])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "rr_" + secrets.token_urlsafe(32)


def parse_entries(text: str, where: str) -> list[ApiKeyEntry]:
    try:
        entries = _ENTRIES.validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        raise AuthSetupError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']} (expected a JSON list of "
                             '{"name", "sha256", "scopes": ["read"|"write"]}; make entries with `rayrec api-key`)'
                             ) from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise AuthSetupError(f"{where}: key names must be unique; got {names}")
    return entries


def load_entries(keys_file: str | None, keys_env: str) -> list[ApiKeyEntry]:
    """Keys from the file and the variable together (a deployment may use either or both)."""
    entries: list[ApiKeyEntry] = []
    if keys_file:
        path = Path(keys_file)
        if not path.is_file():
            raise AuthSetupError(f"serve.auth.keys_file {path} does not exist; create it with `rayrec api-key "
                                 f"--file {path} --name <client> --scopes read`")
        entries += parse_entries(path.read_text(), str(path))
    if os.environ.get(keys_env):
        entries += parse_entries(os.environ[keys_env], f"${keys_env}")
    return entries


def add_key(path: Path, name: str, scopes: list[Scope], rate_per_s: float | None = None) -> str:
    """Append a new key's hash to ``path`` (created 0600) and return the key, which is stored nowhere."""
    entries = parse_entries(path.read_text(), str(path)) if path.is_file() else []
    if any(e.name == name for e in entries):
        raise AuthSetupError(f"{path} already has a key named {name!r}; pick another name or remove it first")
    key = new_key()
    entries.append(ApiKeyEntry(name=name, sha256=hash_key(key), scopes=scopes, rate_per_s=rate_per_s))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_ENTRIES.dump_json(entries, indent=2).decode() + "\n")
    return key


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """0 when a request may pass (one token taken), else seconds until one will."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


class ApiGuard:
    """Who is calling (their key), whether the route group is theirs, and whether they are over their rate."""

    def __init__(self, entries: list[ApiKeyEntry], rate_per_s: float, burst: int) -> None:
        self._entries = entries
        self._buckets = {e.name: TokenBucket(e.rate_per_s or rate_per_s, max(burst, 1)) for e in entries}

    def _match(self, key: str) -> ApiKeyEntry | None:
        digest = hash_key(key)
        found = None
        for e in self._entries:  # every hash compared, so timing does not tell which one matched
            if hmac.compare_digest(digest, e.sha256):
                found = e
        return found

    def check(self, key: str | None, scope: Scope) -> str:
        """The caller's key name, or AuthRejected with the status and reason. ``key`` comes from the
        route's security schemes (a bearer token or ``X-API-Key``)."""
        if not key:
            raise AuthRejected(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                               {"WWW-Authenticate": "Bearer"})
        entry = self._match(key)
        if entry is None:
            raise AuthRejected(401, "unknown API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if scope not in entry.scopes:
            raise AuthRejected(403, f"API key {entry.name!r} may not {scope} (its scopes: {', '.join(entry.scopes)})")
        wait = self._buckets[entry.name].take(time.monotonic())
        if wait > 0:
            raise AuthRejected(429, f"API key {entry.name!r} is over its rate limit; retry after the delay",
                               {"Retry-After": str(max(1, math.ceil(wait)))})
        return entry.name


def guard_from_config(cfg: ServeAuthConfig) -> ApiGuard | None:
    """None when keys are not required; an error when they are and none are configured."""
    if not cfg.required:
        return None
    entries = load_entries(cfg.keys_file, cfg.keys_env)
    if not entries:
        raise AuthSetupError(f"serve.auth.required is true but no keys are configured: set serve.auth.keys_file or "
                             f"${cfg.keys_env} (make keys with `rayrec api-key`)")
    return ApiGuard(entries, cfg.rate_per_s, cfg.burst)
