"""The one retry policy of the remote engines: bounded attempts, exponential backoff, 4xx never retried, and the
failure says how many attempts were really made; the simulator and the wiki retriever use it alike."""

from __future__ import annotations

import logging

import pytest

from zerosearch.search import SearchRequest, build_search_backend
from zerosearch.search.http_retry import SearchCallError, TransientError, call_with_retries


def test_backoff_doubles_and_attempts_are_counted():
    delays, calls = [], []

    def flaky(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 2:
            raise TransientError("busy")
        return "ok"

    assert call_with_retries(flaky, max_retries=3, backoff_s=0.5, what="x", sleep=delays.append) == "ok"
    assert calls == [0, 1, 2] and delays == [0.5, 1.0]
    with pytest.raises(SearchCallError, match=r"x failed after 3 attempt\(s\): busy") as e:
        call_with_retries(lambda a: (_ for _ in ()).throw(TransientError("busy")), max_retries=2, backoff_s=0,
                          what="x", sleep=delays.append)
    assert e.value.attempts == 3
    with pytest.raises(SearchCallError, match=r"after 1 attempt\(s\): bad request"):
        call_with_retries(lambda a: (_ for _ in ()).throw(RuntimeError("bad request")), max_retries=5, backoff_s=0,
                          what="x")


@pytest.mark.parametrize("status, attempts", [(500, 3), (429, 3), (404, 1), (400, 1)])
def test_simulator_and_wiki_retry_alike(chat_server, caplog, status, attempts):
    chat_server.fail_first, chat_server.fail_status = 10**6, status
    for cfg in ({"mode": "simulate_prompt", "ips": [chat_server.url], "simulation_llm": "sim"},
                {"mode": "wiki", "retriever_url": chat_server.url, "use_cache": False}):
        backend = build_search_backend({**cfg, "max_retries": 2, "backoff_s": 0.01, "timeout_s": 5.0})
        posts_before = sum("path" not in r for r in chat_server.requests)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            (res,) = backend.search([SearchRequest(query="q", question="q?")], topk=1)
        backend.close()
        assert not res.ok
        assert sum("path" not in r for r in chat_server.requests) - posts_before == attempts, cfg["mode"]
        assert f"failed after {attempts} attempt(s)" in caplog.text and f"HTTP {status}" in caplog.text
