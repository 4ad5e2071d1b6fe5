"""Loopback HTTP servers for the search-backend tests.

`ChatServer` speaks the OpenAI chat-completions wire format. It stands in for the simulation engine only
where a real one cannot be driven (timeouts, 5xx, retries, load balancing, which question was sent);
the slow module `test_simulate_vllm.py` runs the real vLLM server. `SerpServer` answers in SerpAPI's JSON
shape. Both record every request and can be told to fail or stall.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest


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


TINY_CORPUS = [
    ("p0", "Velmora", "Velmora is the capital city of the Republic of Ostrana, on the river Quell."),
    ("p1", "Dario Fenwick", "Dario Fenwick was a shipbuilder born in Velmora who founded Fenwick Shipping in 1881."),
    ("p2", "Fenwick Shipping", "Fenwick Shipping is a shipping company headquartered in Port Aldane."),
    ("p3", "Mount Ketter", "Mount Ketter is the highest mountain of Ostrana, rising to 4,102 metres."),
    ("p4", "The Quell Letters", "The Quell Letters is a novel written by the poet Imre Salk in 1902."),
    ("p5", "Port Aldane", "Port Aldane is a harbour city in the north of Ostrana with a large fish market."),
]


@pytest.fixture
def tiny_corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in TINY_CORPUS))
    return path


@pytest.fixture
def retriever(tiny_corpus, tmp_path):
    """A real retriever server on loopback (`.url`, `.stop()`) over the tiny corpus."""
    from zerosearch.retriever.index import BM25Index
    from zerosearch.retriever.server import create_app, start_in_thread

    server = start_in_thread(create_app(BM25Index.from_corpus(tiny_corpus, tmp_path / "index")))
    yield server
    server.stop()
