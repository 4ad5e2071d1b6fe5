"""Simulated search against the REAL vLLM OpenAI server on the embedded model (slow: ~2 min start-up).

A recording proxy sits between the backend and vLLM: it stores every request body and forwards it, so the
test sees exactly which question each call carried.
"""

from __future__ import annotations

import pytest

from zerosearch.search import SearchRequest, build_search_backend

pytestmark = pytest.mark.slow


def test_real_simulator_writes_parsed_docs_for_each_samples_question(vllm_server, recording_proxy):
    proxy = recording_proxy(vllm_server.url)
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
