"""Simulated search against the REAL vLLM OpenAI server on the embedded model (slow: ~2 min start-up).

A recording proxy sits between the backend and vLLM: it stores every request body and forwards it, so the
test sees exactly which question each call carried.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from zerosearch.retriever.server import free_port
from zerosearch.search import SearchRequest, build_search_backend
from zerosearch.search.server_launch import is_healthy, start_simulation_server

pytestmark = pytest.mark.slow


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


@pytest.fixture(scope="module")
def vllm_server(embedded_model_path, tmp_path_factory):
    server = start_simulation_server("embedded", port=free_port(), served_name="embedded", startup_timeout_s=900,
                                     log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    yield server
    server.stop()
    assert not is_healthy(server.url)


def test_real_simulator_writes_parsed_docs_for_each_samples_question(vllm_server):
    proxy = RecordingProxy(vllm_server.url)
    backend = build_search_backend({
        "mode": "simulate_prompt", "ips": proxy.url, "simulation_llm": "embedded", "max_tokens": 160,
        "temperature": 0.7, "timeout_s": 300, "max_retries": 1, "concurrency": 4,
    })
    questions = [("Who wrote the novel 1984?", "George Orwell"), ("What is the capital of France?", "Paris"),
                 ("Which planet is known as the Red Planet?", "Mars"), ("Who painted the Mona Lisa?", "Leonardo")]
    reqs = [SearchRequest(query=q.rstrip("?"), question=q, golden_answers=[a], noise_p=0.5) for q, a in questions]
    results = backend.search(reqs, topk=3)
    assert all(r.ok for r in results)
    assert sum(len(r.docs) for r in results) >= 4, [r.docs for r in results]
    for r in results:
        assert len(r.docs) <= 3 and all(d.text and d.title for d in r.docs)
    assert len(proxy.bodies) == 4
    for body in proxy.bodies:
        prompt = body["messages"][-1]["content"]
        (i,) = [i for i, (q, _) in enumerate(questions) if f"Query: {q.rstrip('?')}\n" in prompt]
        assert f"wants to answer: {questions[i][0]}" in prompt and questions[i][1] in prompt
        assert all(q not in prompt for j, (q, _) in enumerate(questions) if j != i)
    m = backend.pop_metrics()
    assert m["search/calls"] == 4 and m["search/failures"] == 0 and m["search/latency_s"] > 0
    backend.close()
    proxy.shutdown()


def test_real_server_rejects_an_unknown_model_without_retries(vllm_server):
    backend = build_search_backend({"mode": "simulate_sft", "ips": vllm_server.url, "simulation_llm": "nope",
                                    "max_retries": 3, "backoff_s": 5.0})
    (res,) = backend.search([SearchRequest(query="x", question="y?", golden_answers=["z"])], topk=2)
    assert not res.ok and res.latency_s < 5.0  # a 404 is not retried
    backend.close()
