"""Bodies over the limit get 413 with a JSON reason, whether their size is declared or streamed."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from rayrec.serve.api import BodySizeLimit


@pytest.fixture(scope="module")
def port():
    app = FastAPI()
    app.add_middleware(BodySizeLimit)
    app.state.max_body_bytes = 100

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return {"keys": len(body)}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def _post(port: int, chunks: list[bytes], chunked: bool) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    conn.request("POST", "/echo", body=iter(chunks) if chunked else b"".join(chunks), headers=headers,
                 encode_chunked=chunked)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("chunked", [False, True])
def test_small_bodies_pass_and_large_ones_get_413_with_a_reason(port, chunked):
    assert _post(port, [b'{"a": 1}'], chunked) == (200, {"keys": 1})
    status, body = _post(port, [b'{"a": "', b"x" * 300, b'"}'], chunked)
    assert status == 413 and "100-byte limit" in body["detail"]
