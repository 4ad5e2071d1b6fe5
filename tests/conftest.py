"""Shared fixtures: the embedded model directory, CPU defaults, GPU-test skipping, and one real vLLM
OpenAI server (the simulation LLM) shared by every test that needs it (start-up takes minutes on CPU)."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    from zerosearch.models import resolve_model_path

    return resolve_model_path("embedded")


class RecordingProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str) -> None:
        self.target = target
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.bodies.append(json.loads(raw))
        resp = httpx.post(self.server.target + self.path, content=raw,
                          headers={"Content-Type": "application/json"}, timeout=300)
        self.send_response(resp.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)


@pytest.fixture(scope="session")
def vllm_server(embedded_model_path, tmp_path_factory):
    server = _start("embedded", port=free_port(), served_name="embedded", startup_timeout_s=900,
                                     log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    yield server
    server.stop()




def _start(*args, **kwargs):
    from zerosearch.search.server_launch import start_simulation_server

    return start_simulation_server(*args, **kwargs)


def free_port() -> int:
    from zerosearch.retriever.server import free_port as fp

    return fp()


@pytest.fixture
def recording_proxy():
    """Factory: a proxy on 127.0.0.1 that records every request body and forwards it to `target`."""
    proxies = []

    def make(target: str) -> RecordingProxy:
        p = RecordingProxy(target)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.shutdown()
