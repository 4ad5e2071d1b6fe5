"""Simulated search against a loopback chat-completions server: questions sent, noise, retries, balancing."""

from __future__ import annotations

import socket
import time

import pytest

from zerosearch.search import NO_INFORMATION, SearchBackend, SearchRequest, build_search_backend, format_docs
from zerosearch.search.simulate import EndpointPool


def _backend(urls, **kw):
    cfg = {"mode": "simulate_prompt", "ips": urls, "simulation_llm": "sim", "timeout_s": 5.0, "max_retries": 2,
           "backoff_s": 0.01, "concurrency": 4, **kw}
    return build_search_backend(cfg)


def _requests(n, noise_p=0.0):
    return [SearchRequest(query=f"query {i}", question=f"question number {i}?", golden_answers=[f"answer{i}"],
                          noise_p=noise_p) for i in range(n)]


@pytest.mark.parametrize("mode", ["simulate_prompt", "simulate_sft"])
def test_each_call_gets_its_own_question_and_answers(chat_server, mode):
    backend = _backend([chat_server.url], mode=mode)
    assert isinstance(backend, SearchBackend) and backend.name == mode
    reqs = _requests(8)
    results = backend.search(reqs, topk=3)
    assert len(chat_server.requests) == 8
    for body in chat_server.requests:
        prompt = body["messages"][-1]["content"]
        i = int(prompt.split("query ")[1].split()[0])
        assert f"question number {i}?" in prompt and f"answer{i}" in prompt
        assert f"answer{(i + 1) % 8}" not in prompt
        assert body["model"] == "sim" and body["max_tokens"] == backend.cfg.max_tokens
    for i, res in enumerate(results):  # results come back in request order, parsed into top-k docs
        assert res.ok and len(res.docs) == 3 and not res.noisy
        assert all(f"query=query {i} " in d.text and f"question=question number {i}?" in d.text for d in res.docs)
        assert res.docs[0].title == "useful 1"
    assert format_docs(results[0]).startswith("Doc 1(Title: useful 1) kind=useful")
    if mode == "simulate_sft":
        assert len(chat_server.requests[0]["messages"]) == 1
    else:  # one-shot example: system, example user, example answer, request
        assert [m["role"] for m in chat_server.requests[0]["messages"]] == ["system", "user", "assistant", "user"]
    m = backend.pop_metrics()
    assert m["search/calls"] == 8 and m["search/failures"] == 0 and m["search/real_calls_avoided"] == 8
    assert m["search/noisy_frac"] == 0.0 and backend.pop_metrics() == {}
    backend.close()


def test_noise_draws_are_seeded_and_follow_noise_p(chat_server):
    reqs = _requests(40, noise_p=0.5)
    kinds = []
    for _ in range(2):
        backend = _backend([chat_server.url], seed=7)
        kinds.append([r.noisy for r in backend.search(reqs, topk=2)])
        m = backend.pop_metrics()
        assert m["search/noise_p"] == pytest.approx(0.5)
        assert m["search/noisy_frac"] == pytest.approx(sum(kinds[-1]) / 40)
        backend.close()
    assert kinds[0] == kinds[1] and 5 < sum(kinds[0]) < 35
    backend = _backend([chat_server.url])
    assert all(r.noisy and r.docs[0].text.startswith("kind=noisy") for r in backend.search(_requests(4, 1.0), 2))
    assert not any(r.noisy for r in backend.search(_requests(4, 0.0), 2))
    backend.close()


def test_per_document_noise_interleaves_useful_and_noisy_docs(chat_server):
    backend = _backend([chat_server.url], per_document_noise=True, seed=3)
    results = backend.search(_requests(10, noise_p=0.5), topk=4)
    mixed = 0
    for res in results:
        kinds = [d.text.split()[0] for d in res.docs]
        assert len(kinds) == 4 and set(kinds) <= {"kind=useful", "kind=noisy"}
        mixed += len(set(kinds)) == 2
        assert res.noisy == ("kind=noisy" in kinds)
    assert mixed >= 3
    # a mixed draw costs exactly one useful and one noisy call
    assert len(chat_server.requests) == 10 + mixed
    backend.close()


def test_retries_5xx_then_succeeds(chat_server):
    chat_server.fail_first = 2
    backend = _backend([chat_server.url], max_retries=3)
    (res,) = backend.search(_requests(1), topk=2)
    assert res.ok and len(res.docs) == 2 and len(chat_server.requests) == 3
    assert backend.pop_metrics()["search/failures"] == 0


def test_gives_up_after_bounded_retries(chat_server):
    chat_server.fail_first = 10**6
    backend = _backend([chat_server.url], max_retries=2)
    results = backend.search(_requests(2), topk=2)
    assert [r.ok for r in results] == [False, False] and all(not r.docs for r in results)
    assert format_docs(results[0]) == NO_INFORMATION
    assert len(chat_server.requests) == 2 * 3
    m = backend.pop_metrics()
    assert m["search/failures"] == 2 and m["search/real_calls_avoided"] == 0


def test_timeout_is_bounded(chat_server):
    chat_server.sleep_s = 1.5
    backend = _backend([chat_server.url], timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    (res,) = backend.search(_requests(1), topk=2)
    assert not res.ok and time.monotonic() - t0 < 1.4
    assert len(chat_server.requests) == 2


def test_wrong_model_name_fails_fast_without_retries(chat_server):
    backend = _backend([chat_server.url], simulation_llm="not-served", max_retries=3)
    (res,) = backend.search(_requests(1), topk=2)
    assert not res.ok
    assert len([r for r in chat_server.requests if "messages" in r]) == 1


def test_load_balancing_and_failover(chat_server_pair):
    a, b = chat_server_pair
    backend = _backend([f"{a.url},{b.url}"])  # comma string, as the train scripts pass IPS
    assert backend.pool.urls == [a.url, b.url]
    assert all(r.ok for r in backend.search(_requests(12), topk=1))
    assert len(a.requests) >= 3 and len(b.requests) >= 3 and len(a.requests) + len(b.requests) == 12
    backend.close()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    backend = _backend([dead, a.url], max_retries=1)
    results = backend.search(_requests(6), topk=1)
    assert all(r.ok for r in results), "a refused connection fails over to the live server"
    backend.close()


def test_concurrency_is_bounded(chat_server):
    chat_server.sleep_s = 0.2
    backend = _backend([chat_server.url], concurrency=3)
    backend.search(_requests(9), topk=1)
    assert chat_server.max_in_flight <= 3


def test_endpoint_pool_prefers_least_in_flight():
    pool = EndpointPool(["a", "b", "c"])
    first = [pool.acquire() for _ in range(3)]
    assert sorted(first) == [0, 1, 2]
    pool.release(1)
    assert pool.acquire() == 1
    assert pool.acquire(avoid=0) != 0


def test_blank_query_and_bad_noise_p(chat_server):
    backend = _backend([chat_server.url])
    (res,) = backend.search([SearchRequest(query="  ")], topk=3)
    assert res.ok and res.docs == [] and chat_server.requests == []
    with pytest.raises(ValueError, match="noise_p"):
        backend.search([SearchRequest(query="q", noise_p=1.5)], topk=3)
