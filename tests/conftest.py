"""Shared fixtures: the embedded model directory, CPU defaults, GPU-test skipping, one real vLLM OpenAI server (the
simulation LLM) shared by every test that needs it (start-up takes minutes on CPU), a recording proxy, the
process-tree recorder of the no-orphans and fault tests, and two loopback servers that record every request and can be
told to fail or stall: `ChatServer` speaks the OpenAI chat-completions wire format (it stands in for the simulation
engine only where a real one cannot be driven: timeouts, 5xx, retries, load balancing, which question was sent; the
slow `tests/zerosearch/search/test_simulate_vllm.py` runs the real vLLM server), `SerpServer` answers in SerpAPI's JSON
shape (Google is not reachable from here)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx
import psutil
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
    """Forwards POSTs to `target`; records every body and counts the requests in flight through it."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        self.target = target
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = self.served = 0
        self.lock = threading.Lock()
        # one client for every forwarded call: a new httpx client per call builds an SSL context (~25-50 ms holding
        # the GIL), which starves the threads of the client under test
        self.http = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with srv.lock:
            srv.bodies.append(json.loads(raw))
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            resp = srv.http.post(srv.target + self.path, content=raw, headers={"Content-Type": "application/json"})
        finally:
            # out of flight once the upstream answered, before the client sees a byte: the client may send its next
            # request as soon as it has read this response, while this thread is still returning
            with srv.lock:
                srv.in_flight -= 1
                srv.served += 1
        try:
            self.send_response(resp.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(resp.content)))
            self.end_headers()
            self.wfile.write(resp.content)
        except (BrokenPipeError, ConnectionResetError):
            pass


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
        p.server_close()
        p.http.close()


class ProcessTree:
    """Every process that ever was a descendant of `pid` (by pid and start time), recorded every 0.2 s while the test
    runs, with every command line it showed (Ray's workers retitle themselves) and when it was last seen running."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.last_alive: dict[tuple[int, float], float] = {}  # monotonic time a process was last seen running
        self.cmd: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                for p in self.root.children(recursive=True):
                    try:
                        key = (p.pid, p.create_time())
                        self.seen.setdefault(key, p)
                        if p.status() != psutil.STATUS_ZOMBIE:
                            title = " ".join(p.cmdline()) or p.name()
                            if title not in self.cmd.get(key, ""):
                                self.cmd[key] = f"{self.cmd.get(key, '')} | {title}"
                            self.last_alive[key] = time.monotonic()
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            time.sleep(0.2)

    def names(self) -> list[str]:
        """The command lines seen so far, one string per process."""
        return list(self.cmd.values())

    def wait_for(self, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(what in n for n in self.names()):
                return
            time.sleep(0.5)
        raise AssertionError(f"no {what!r} process in {self.names()}")

    def died(self, what: str) -> float | None:
        """When the first process whose command line held `what` was last seen running."""
        times = [t for key, t in self.last_alive.items() if what in self.cmd.get(key, "")]
        return min(times) if times else None

    def stop(self) -> list[psutil.Process]:
        """Stop recording; every process seen."""
        self._stop.set()
        self._thread.join()
        return list(self.seen.values())

    def left_after(self, timeout_s: float) -> list[str]:
        """Stop recording, wait up to `timeout_s` for every process seen to end; those still running."""
        _, alive = psutil.wait_procs(self.stop(), timeout=timeout_s)
        return self.still_running(alive)

    @staticmethod
    def still_running(procs: list[psutil.Process]) -> list[str]:
        """`pid command line` of each of `procs` still running. A zombie is not: it has ended and holds nothing but
        its process-table entry until its parent (often not ours to reap) waits for it."""
        out = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:100] or p.name()}")
            except psutil.Error:
                pass
        return out


@pytest.fixture
def process_tree():
    """Factory: `process_tree(pid)` starts recording `pid`'s descendants (`ProcessTree`)."""
    return ProcessTree


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.requests: list = []
        self.lock = threading.Lock()
        self.fail_first = 0  # the first N requests get `fail_status`
        self.fail_status = 500
        self.sleep_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, record) -> tuple[int, dict]:
        raise NotImplementedError

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _handle(self, record) -> None:
            srv = self.server
            with srv.lock:
                srv.requests.append(record)
                n = len(srv.requests)
                srv.in_flight += 1
                srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            try:
                if srv.sleep_s:
                    time.sleep(srv.sleep_s)
                status, body = (srv.fail_status, {"error": "injected"}) if n <= srv.fail_first else srv.answer(record)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with srv.lock:
                    srv.in_flight -= 1

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            self._handle(json.loads(self.rfile.read(length) or b"{}"))

        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            self._handle({"path": parsed.path, **{k: v[0] for k, v in parse_qs(parsed.query).items()}})


def user_field(body: dict, label: str) -> str:
    """The value after `label:` in the last user message (works for both prompt families)."""
    text = body["messages"][-1]["content"]
    m = re.search(rf"^{label}:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else ""


class ChatServer(_Recorder):
    """Answers k documents that echo the query, question, answer and kind it was sent."""

    model = "sim"

    def answer(self, body: dict) -> tuple[int, dict]:
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        prompt = body["messages"][-1]["content"]
        sft = prompt.startswith("search simulation")
        kind = "noisy" if ("(noisy)" in prompt if sft else "keep out" in prompt) else "useful"
        question = user_field(body, "question" if sft else "The searcher wants to answer")
        query = user_field(body, "query" if sft else "Query")
        k = int(user_field(body, "documents") or 0) if sft else int(re.search(r"Write (\d+) result", prompt).group(1))
        lines = [f"Doc {i + 1} (Title: {kind} {i + 1}) kind={kind} n={i + 1} query={query} question={question}"
                 for i in range(k)]
        content = "Here are the documents:\n" + "\n".join(lines)
        return 200, {"id": "x", "object": "chat.completion", "model": self.model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}]}


class SerpServer(_Recorder):
    """GET /search -> SerpAPI-shaped JSON with three organic results mentioning the query."""

    key = "test-key-123"

    def answer(self, params: dict) -> tuple[int, dict]:
        if params.get("api_key") != self.key:
            return 401, {"error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"}
        q = params.get("q", "")
        if q == "nothing":
            return 200, {"search_metadata": {"status": "Success"},
                         "error": "Google hasn't returned any results for this query."}
        return 200, {
            "search_metadata": {"status": "Success"},
            "answer_box": {"title": "Box", "answer": f"box answer for {q}"},
            "organic_results": [
                {"position": i + 1, "title": f"Result {i + 1} for {q}", "link": "https://example.org",
                 "snippet": f"snippet {i + 1} about {q}"}
                for i in range(3)
            ],
        }


@pytest.fixture
def chat_server():
    srv = ChatServer()
    yield srv
    srv.stop()


@pytest.fixture
def chat_server_pair():
    a, b = ChatServer(), ChatServer()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def serp_server():
    srv = SerpServer()
    yield srv
    srv.stop()
