"""The simulation server's body limit (`zerosearch.body_limit.BodyLimit`) on a FastAPI app under uvicorn on
127.0.0.1: over the limit by Content-Length or while streamed -> 413 in the OpenAI error shape; under it the body
reaches the app unchanged and the app can still watch for a disconnect. The real vLLM server with it:
tests/reliability/test_secrets.py."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request

from zerosearch.body_limit import ENV, MAX_BODY_BYTES, BodyLimit
from zerosearch.retriever.server import start_in_thread


@pytest.fixture(scope="module")
def server():
    app = FastAPI()
    app.add_middleware(BodyLimit)  # as vLLM adds it: the class, no arguments

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        return {"n": len(body), "head": body[:8].decode(), "disconnected": await request.is_disconnected()}

    srv = start_in_thread(app)
    yield srv
    srv.stop()


def _chunked(data: bytes):
    return iter(data[i:i + 65536] for i in range(0, len(data), 65536))


def test_over_the_limit_is_a_413_with_content_length_or_streamed(server):
    for content in (b"x" * (5 * 10**6), _chunked(b"x" * (MAX_BODY_BYTES + 1))):
        resp = httpx.post(server.url + "/echo", content=content, timeout=30)
        assert resp.status_code == 413
        err = resp.json()["error"]
        assert err["code"] == 413 and ENV in err["message"] and str(MAX_BODY_BYTES) in err["message"]


def test_under_the_limit_reaches_the_app_unchanged(server):
    for content in (b"abcdefgh" + b"x" * 100, _chunked(b"abcdefgh" + b"x" * (MAX_BODY_BYTES - 8))):
        resp = httpx.post(server.url + "/echo", content=content, timeout=30)
        assert resp.status_code == 200 and resp.json()["head"] == "abcdefgh"
        assert resp.json()["disconnected"] is False
    assert httpx.post(server.url + "/echo", content=b"", timeout=30).json()["n"] == 0


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "4096")
    assert BodyLimit(None).max_body_bytes == 4096
    monkeypatch.delenv(ENV)
    assert BodyLimit(None).max_body_bytes == MAX_BODY_BYTES
