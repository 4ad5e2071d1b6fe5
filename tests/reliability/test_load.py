"""Load: the retriever server at 50 concurrent clients for 30 s, and the simulator client against a real vLLM server.

The retriever runs as users run it (`python -m zerosearch.retriever.server` on the embedded corpus, uvicorn on
127.0.0.1); 50 asyncio clients send Search-R1 and ZeroSearch payloads back to back for a bounded 30 s. The test
asserts 0 errors, a sane request count and p99, a healthy server after, and prints p50 / p99 / requests per second.

The simulator client (`simulate_prompt`) is driven against the shared vLLM OpenAI server behind the suite's recording
proxy on 127.0.0.1 (both in tests/conftest.py; the proxy counts the calls in flight through it): calls in flight never
exceed `search.concurrency` (also checked at the server, on vLLM's `vllm:num_requests_running` gauge), and a batch
under a tight `search.deadline_s` ends within the deadline plus a small slack, every call counted as a failure, and
the server drops the abandoned requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from zerosearch.retriever.server import free_port
from zerosearch.search import SearchRequest, build_search_backend

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CLIENTS, LOAD_S = 50, 30.0


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"{url} not healthy after {timeout_s} s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The corpus of an embedded world of its own (a fresh clone has no data/embedded yet)."""
    from zerosearch.data.world import generate

    out = tmp_path_factory.mktemp("world")
    generate(out, seed=0, n_entities=1000, n_train=12, n_test=4)
    return out / "corpus.jsonl"


@pytest.fixture(scope="module")
def retriever(tmp_path_factory, corpus):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerosearch.retriever.server", "--corpus", str(corpus), "--port", str(port),
         "--index-dir", str(tmp_path_factory.mktemp("idx"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, 120)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _queries(corpus: Path) -> list[str]:
    titles = [json.loads(line)["contents"].split("\n", 1)[0].strip('"') for line in corpus.read_text().splitlines()]
    templates = ["what is the capital of {}", "who founded {}", "{}", "when was {} established", "cities of {}"]
    rng = random.Random(0)
    return [rng.choice(templates).format(rng.choice(titles)) for _ in range(500)]


async def _client(url: str, http: httpx.AsyncClient, queries: list[str], seed: int, end: float,
                  latencies: list[float], errors: list[str]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < end:
        q = rng.choice(queries)
        if rng.random() < 0.5:
            body, want = {"queries": [q, rng.choice(queries)], "topk": 3, "return_scores": True}, "result"
        else:
            body, want = {"query": q, "top_k": 3}, "query"
        t0 = time.perf_counter()
        try:
            resp = await http.post(url + "/retrieve", json=body)
            ok = resp.status_code == 200 and want in resp.json() and resp.json()["result"]
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - t0)
        if not ok:
            errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")


async def _load(url: str, corpus: Path) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    queries = _queries(corpus)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        t0 = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(_client(url, http, queries, i, t0 + LOAD_S, latencies, errors) for i in range(CLIENTS))),
            timeout=LOAD_S + 60,
        )
        return latencies, errors, time.monotonic() - t0


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def test_retriever_takes_50_clients_for_30s_without_errors(retriever, corpus):
    url, proc = retriever
    rss0 = psutil.Process(proc.pid).memory_info().rss
    latencies, errors, wall = asyncio.run(_load(url, corpus))
    rss1 = psutil.Process(proc.pid).memory_info().rss
    p50, p99 = _pct(latencies, 0.50), _pct(latencies, 0.99)
    print(f"retriever load: {CLIENTS} clients, {wall:.1f} s, {len(latencies)} requests "
          f"({len(latencies) / wall:.0f}/s), {len(errors)} errors, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"server RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB")
    assert not errors, errors[:5]
    assert wall < LOAD_S + 30  # bounded: every client stops once the 30 s are over
    assert len(latencies) >= 20 * CLIENTS  # each client served at least 20 times in 30 s
    assert p99 < 5.0
    assert rss1 - rss0 < 300 * 2**20  # no growth with the request count
    health = httpx.get(url + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["passages"] == len(corpus.read_text().splitlines())


# ---------------------------------------------------------------------------------------------
# the simulator client against the real vLLM server

class GaugePoller:
    """Polls vLLM's /metrics every 50 ms for `vllm:num_requests_running`; keeps the maximum seen. One httpx client
    for all polls: a new one per poll builds an SSL context (~25-50 ms holding the GIL), which starved the client
    under test of the GIL (a 0.5 s deadline measured 1.2-3.4 s)."""

    def __init__(self, url: str) -> None:
        self.url, self.max_seen, self.last = url, 0.0, 0.0
        self._http = httpx.Client(timeout=5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def running(self) -> float:
        text = self._http.get(self.url + "/metrics").text
        return sum(float(m.group(1)) for m in re.finditer(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = self.running()
                self.max_seen = max(self.max_seen, self.last)
            except httpx.HTTPError:
                pass
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._http.close()


QUESTIONS = [("Who wrote the novel 1984?", "George Orwell"), ("What is the capital of France?", "Paris"),
             ("Which planet is known as the Red Planet?", "Mars"), ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
             ("What is the largest ocean on Earth?", "Pacific Ocean"), ("Who discovered penicillin?", "Fleming")]


def _requests(n: int) -> list[SearchRequest]:
    return [SearchRequest(query=q.rstrip("?"), question=q, golden_answers=[a], noise_p=0.0)
            for q, a in (QUESTIONS[i % len(QUESTIONS)] for i in range(n))]


def test_simulator_client_respects_its_concurrency_bound(vllm_server, recording_proxy):
    bound = 3
    proxy = recording_proxy(vllm_server.url)
    poller = GaugePoller(vllm_server.url)
    backend = build_search_backend({"mode": "simulate_prompt", "ips": proxy.url, "simulation_llm": "embedded",
                                    "concurrency": bound, "max_tokens": 48, "timeout_s": 120, "max_retries": 0})
    try:
        results = backend.search(_requests(12), topk=2)
    finally:
        backend.close()
        poller.stop()
    print(f"simulator load: {proxy.served} calls, at most {proxy.max_in_flight} in flight at the proxy, "
          f"{poller.max_seen:.0f} running at vLLM (bound {bound})")
    assert proxy.served == 12 and sum(r.ok for r in results) >= 10
    assert 1 < proxy.max_in_flight <= bound
    assert poller.max_seen <= bound


def test_simulator_deadline_holds_against_the_real_server(vllm_server, caplog):
    deadline_s, n = 0.5, 4
    backend = build_search_backend({"mode": "simulate_prompt", "ips": vllm_server.url, "simulation_llm": "embedded",
                                    "concurrency": n, "max_tokens": 1024, "temperature": 1.0, "timeout_s": 120,
                                    "deadline_s": deadline_s, "max_retries": 3, "backoff_s": 0.1})
    poller = GaugePoller(vllm_server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="zerosearch.search.simulate"):
            t0 = time.monotonic()
            results = backend.search(_requests(n), topk=3)
            elapsed = time.monotonic() - t0
        metrics = backend.pop_metrics()
        print(f"simulator deadline: batch of {n} with deadline_s {deadline_s} ended in {elapsed:.2f} s")
        assert elapsed < deadline_s + 1.5  # not timeout_s (120) nor timeout_s x attempts
        assert not any(r.ok for r in results) and metrics["search/failures"] == n
        assert sum("search.deadline_s" in r.getMessage() for r in caplog.records) == n
        # nothing is left running at the server once the abandoned requests are dropped or done
        end = time.monotonic() + 120
        while poller.last > 0 and time.monotonic() < end:
            time.sleep(0.2)
        assert poller.running() == 0
        assert httpx.get(vllm_server.url + "/health", timeout=5).status_code == 200
    finally:
        backend.close()
        poller.stop()
