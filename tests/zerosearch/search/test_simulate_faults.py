"""Simulator client against malformed, empty and slow answers: each is a counted failure, none escapes `search()`,
and no call outlives its time bounds (each attempt `timeout_s` in wall-clock time, the whole call `deadline_s`)."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from verl.utils.config_loader import ConfigError
from zerosearch.search import NO_INFORMATION, SearchRequest, build_search_backend, format_docs


class TrickleServer(ThreadingHTTPServer):
    """Sends a 200 header with a long Content-Length, then one byte after each of `gaps` seconds (the last gap
    repeats): small gaps never trip a read timeout."""

    daemon_threads = True

    def __init__(self, gaps: list[float], size: int = 200) -> None:
        self.gaps, self.size, self.posts = gaps, size, 0
        super().__init__(("127.0.0.1", 0), self.Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            srv = self.server
            srv.posts += 1
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(srv.size))
            self.end_headers()
            try:
                for i in range(srv.size):
                    time.sleep(srv.gaps[min(i, len(srv.gaps) - 1)])
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass


@pytest.fixture
def content_server(chat_server):
    """The loopback chat server answering `content_server.reply` (the whole JSON body, set by the test)."""
    chat_server.reply = None
    chat_server.answer = lambda body: (200, chat_server.reply)
    return chat_server


def _backend(url, **kw):
    cfg = {"mode": "simulate_sft", "ips": [url], "simulation_llm": "sim", "timeout_s": 5.0, "max_retries": 2,
           "backoff_s": 0.01, "concurrency": 2, **kw}
    return build_search_backend(cfg)


def _chat(content, **choice) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, **choice}]}


@pytest.mark.parametrize("reply, says", [
    (_chat({"text": "Doc 1 (Title: t) a document"}), "content is a dict, not text"),
    (_chat(["Doc 1 (Title: t) a document"]), "content is a list, not text"),
    (_chat(42), "content is a int, not text"),
    (_chat(None), "empty content"),
    (_chat(""), "empty content"),
    (_chat(" \n\t "), "empty content"),
    (_chat("", finish_reason="length"), "raise search.max_tokens"),
    (_chat("<|im_end|>"), "holds no document"),
    ({"choices": []}, "not a chat-completions answer"),
    ({"choices": [{"message": "Doc 1 text"}]}, "not a chat-completions answer"),
    (["Doc 1 (Title: t) a document"], "not a chat-completions answer"),
    ({"error": {"message": "overloaded"}}, "not a chat-completions answer"),
])
def test_malformed_or_empty_answers_are_counted_failures(content_server, caplog, reply, says):
    content_server.reply = reply
    backend = _backend(content_server.url)
    with caplog.at_level(logging.WARNING):
        results = backend.search([SearchRequest(query="q", question="q?", golden_answers=["a"])] * 2, topk=3)
    assert [r.ok for r in results] == [False, False] and format_docs(results[0]) == NO_INFORMATION
    m = backend.pop_metrics()
    assert m["search/failures"] == 2 and m["search/real_calls_avoided"] == 0
    assert says in caplog.text and "failed after 1 attempt(s)" in caplog.text  # a malformed answer is not retried
    assert len(content_server.requests) == 2
    backend.close()


def test_a_good_answer_after_the_fixes_still_parses(content_server):
    content_server.reply = _chat("Doc 1 (Title: A) first text here\nDoc 2 (Title: B) second text here")
    backend = _backend(content_server.url)
    (res,) = backend.search([SearchRequest(query="q")], topk=2)
    assert res.ok and [d.title for d in res.docs] == ["A", "B"]
    assert backend.pop_metrics()["search/failures"] == 0
    backend.close()


def test_a_trickling_answer_is_cut_at_timeout_s():
    """One byte every 0.1 s never trips httpx's per-read timeout: before the fix one attempt took the whole body
    (200 bytes: 20 s per attempt, 60 s per call with two retries)."""
    srv = TrickleServer(gaps=[0.1])
    backend = _backend(f"http://127.0.0.1:{srv.server_address[1]}", timeout_s=0.5, max_retries=2, deadline_s=30.0)
    t0 = time.monotonic()
    (res,) = backend.search([SearchRequest(query="q")], topk=2)
    elapsed = time.monotonic() - t0
    assert not res.ok and backend.pop_metrics()["search/failures"] == 1
    assert srv.posts == 3 and elapsed < 5.0, elapsed  # 3 x 0.5 s and the backoffs, with room for a busy CI box
    backend.close()
    srv.shutdown()


def test_a_body_stalled_after_a_late_byte_ends_at_the_deadline():
    """A byte just before the deadline restarts httpx's read timeout; the socket is shut down at the deadline."""
    srv = TrickleServer(gaps=[1.8, 30.0])
    backend = _backend(f"http://127.0.0.1:{srv.server_address[1]}", timeout_s=2.0, max_retries=0)
    t0 = time.monotonic()
    (res,) = backend.search([SearchRequest(query="q")], topk=2)
    elapsed = time.monotonic() - t0
    assert not res.ok and elapsed < 3.0, elapsed  # without the shutdown: 1.8 + a fresh 2 s read timeout
    backend.close()
    srv.shutdown()


def test_deadline_s_bounds_all_attempts_of_a_call(chat_server, caplog):
    chat_server.sleep_s = 2.0  # stalls before the headers: each attempt ends at timeout_s
    backend = _backend(chat_server.url, timeout_s=0.4, max_retries=10, deadline_s=1.0, backoff_s=0.05)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        (res,) = backend.search([SearchRequest(query="q")], topk=2)
    elapsed = time.monotonic() - t0
    assert not res.ok and elapsed < 2.0, elapsed  # without deadline_s: 11 attempts, > 50 s of backoff
    assert 2 <= len(chat_server.requests) <= 3
    assert "search.deadline_s" in caplog.text
    backend.close()


def test_default_deadline_is_timeout_times_attempts(chat_server):
    chat_server.sleep_s = 2.0
    backend = _backend(chat_server.url, timeout_s=0.3, max_retries=1, backoff_s=0.0)
    t0 = time.monotonic()
    (res,) = backend.search([SearchRequest(query="q")], topk=2)
    assert not res.ok and time.monotonic() - t0 < 1.5
    assert len(chat_server.requests) == 2
    backend.close()


@pytest.mark.parametrize("status", [400, 404, 422])
def test_4xx_is_tried_once_and_logged_as_one_attempt(chat_server, caplog, status):
    chat_server.fail_first, chat_server.fail_status = 10**6, status
    backend = _backend(chat_server.url, max_retries=3)
    with caplog.at_level(logging.WARNING):
        (res,) = backend.search([SearchRequest(query="q")], topk=2)
    assert not res.ok and len([r for r in chat_server.requests if "messages" in r]) == 1
    assert "failed after 1 attempt(s)" in caplog.text and "4 attempt" not in caplog.text
    backend.close()


@pytest.mark.parametrize("value", [0, -1.5])
def test_deadline_s_must_be_positive(value):
    with pytest.raises(ConfigError, match=r"search\.deadline_s must be > 0"):
        _backend("http://127.0.0.1:1", deadline_s=value)
