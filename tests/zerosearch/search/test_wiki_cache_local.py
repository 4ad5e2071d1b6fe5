"""`wiki` (HTTP retriever on loopback), the sqlite cache in front of it, and in-process `local` BM25."""

from __future__ import annotations

import threading

from zerosearch.search import SearchBackend, SearchRequest, build_search_backend
from zerosearch.search.cache import CachedBackend, SearchCache


def _wiki(url, tmp_path, **kw):
    cfg = {"mode": "wiki", "retriever_url": url, "cache_path": str(tmp_path / "cache.sqlite"), "max_retries": 1,
           "backoff_s": 0.01, "timeout_s": 5.0, **kw}
    return build_search_backend(cfg)


def test_wiki_finds_passages_in_batches(retriever, tmp_path):
    backend = _wiki(retriever.url, tmp_path, use_cache=False, retrieval_batch_size=2)
    queries = ["capital of Ostrana", "who founded Fenwick Shipping", "", "highest mountain", "Quell Letters novel"]
    results = backend.search([SearchRequest(query=q) for q in queries], topk=2)
    assert results[0].docs[0].title == "Velmora"
    assert results[1].docs[0].title == "Dario Fenwick" and "founded Fenwick Shipping" in results[1].docs[0].text
    assert results[2].ok and results[2].docs == []
    assert results[3].docs[0].title == "Mount Ketter" and results[4].docs[0].title == "The Quell Letters"
    assert all(len(r.docs) <= 2 for r in results)


def test_wiki_server_down_gives_failures(tmp_path):
    backend = _wiki("http://127.0.0.1:9", tmp_path, use_cache=False)
    results = backend.search([SearchRequest(query="a"), SearchRequest(query="b")], topk=2)
    assert [r.ok for r in results] == [False, False]
    assert backend.pop_metrics()["search/failures"] == 2


def test_cache_hits_and_persists_across_instances(retriever, tmp_path):
    backend = _wiki(retriever.url, tmp_path)
    assert isinstance(backend, CachedBackend) and isinstance(backend, SearchBackend) and backend.name == "wiki"
    reqs = [SearchRequest(query="capital of Ostrana", noise_p=0.2), SearchRequest(query="highest mountain")]
    first = backend.search(reqs, topk=2)
    assert not any(r.cached for r in first)
    second = backend.search([SearchRequest(query="  capital   of Ostrana "), reqs[1]], topk=2)
    assert all(r.cached for r in second) and [r.docs for r in second] == [r.docs for r in first]
    assert backend.search(reqs[:1], topk=3)[0].cached is False  # k is part of the key
    m = backend.pop_metrics()
    assert m["search/calls"] == 5 and m["search/cache_hits"] == 2 and m["search/real_calls_avoided"] == 2
    assert m["search/noise_p"] == 0.4 / 5
    backend.close()
    # a new instance over the same file answers with the retriever gone
    retriever.stop()
    offline = _wiki(retriever.url, tmp_path)
    again = offline.search(reqs, topk=2)
    assert all(r.cached and r.ok for r in again) and again[0].docs == first[0].docs
    failed = offline.search([SearchRequest(query="never asked")], topk=2)[0]
    assert not failed.ok
    assert len(SearchCache(tmp_path / "cache.sqlite")) == 3  # failures are not cached


def test_cache_is_thread_safe(tmp_path):
    from zerosearch.search.base import Doc

    cache = SearchCache(tmp_path / "c.sqlite")

    def work(t):
        for i in range(50):
            cache.put("e", f"q{t}-{i}", 3, [Doc("t", f"x{i}")])
            assert cache.get("e", f"q{t}-{i}", 3) == [Doc("t", f"x{i}")]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(cache) == 200


def test_local_bm25_finds_the_right_passage(tiny_corpus, tmp_path):
    cfg = {"mode": "local", "corpus_path": str(tiny_corpus), "index_dir": str(tmp_path / "idx")}
    backend = build_search_backend(cfg)
    assert isinstance(backend, SearchBackend) and not isinstance(backend, CachedBackend)
    results = backend.search([SearchRequest(query="Which company did Dario Fenwick found?"),
                              SearchRequest(query="harbour fish market")], topk=3)
    assert results[0].docs[0].title == "Dario Fenwick" and results[0].docs[0].text.startswith("Dario Fenwick was")
    assert results[1].docs[0].title == "Port Aldane"
    assert (tmp_path / "idx" / "zerosearch_index.json").exists()
    again = build_search_backend(cfg)  # loads the cached index
    assert again.search([SearchRequest(query="Dario Fenwick")], 1)[0].docs == results[0].docs[:1]
    assert backend.pop_metrics()["search/calls"] == 2
