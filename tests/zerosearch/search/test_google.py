"""`google` backend through the real serpapi client against a loopback server in SerpAPI's JSON shape."""

from __future__ import annotations

import logging

import pytest

from zerosearch.search import NO_INFORMATION, SearchRequest, build_search_backend, format_docs


@pytest.fixture
def google(serp_server, monkeypatch):
    monkeypatch.setenv("SER_API_KEY", serp_server.key)
    monkeypatch.setenv("SERPAPI_BASE_URL", serp_server.url)

    def make(**kw):
        cfg = {"mode": "google", "use_cache": False, "timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01, **kw}
        return build_search_backend(cfg)

    return make


def test_organic_results_become_docs(google, serp_server):
    backend = google(serp_params={"gl": "us"})
    results = backend.search([SearchRequest(query="who wrote 1984"), SearchRequest(query="nothing")], topk=2)
    assert [(d.title, d.text) for d in results[0].docs] == [
        ("Result 1 for who wrote 1984", "snippet 1 about who wrote 1984"),
        ("Result 2 for who wrote 1984", "snippet 2 about who wrote 1984"),
    ]
    assert results[1].ok and format_docs(results[1]) == NO_INFORMATION  # "no results" is not a failure
    sent = serp_server.requests[0]
    assert sent["path"] == "/search" and sent["engine"] == "google" and sent["gl"] == "us"
    assert sent["api_key"] == serp_server.key
    assert serp_server.key not in repr(backend)
    m = backend.pop_metrics()
    assert m["search/calls"] == 2 and m["search/failures"] == 0 and m["search/real_calls_avoided"] == 0
    with_box = google(serp_answer_box=True).search([SearchRequest(query="q")], topk=2)[0]
    assert with_box.docs[0].text == "box answer for q" and len(with_box.docs) == 2


def test_5xx_is_retried_then_fails_with_key_masked(google, serp_server, caplog):
    serp_server.fail_first = 10**6
    with caplog.at_level(logging.DEBUG):
        (res,) = google().search([SearchRequest(query="q")], topk=3)
    assert not res.ok and res.docs == [] and len(serp_server.requests) == 3
    assert "500" in caplog.text and serp_server.key not in caplog.text


def test_bad_key_fails_without_retries(google, serp_server, monkeypatch, caplog):
    monkeypatch.setenv("SER_API_KEY", "wrong-key-999")
    (res,) = google().search([SearchRequest(query="q")], topk=3)
    assert not res.ok and len(serp_server.requests) == 1
    assert "401" in caplog.text and "wrong-key-999" not in caplog.text


def test_timeout_then_recovery(google, serp_server):
    serp_server.sleep_s = 1.0
    backend = google(timeout_s=0.2, max_retries=1)
    (res,) = backend.search([SearchRequest(query="q")], topk=3)
    assert not res.ok and backend.pop_metrics()["search/failures"] == 1
    serp_server.sleep_s = 0.0
    assert backend.search([SearchRequest(query="q")], topk=3)[0].ok
