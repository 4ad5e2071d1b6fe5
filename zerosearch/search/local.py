"""In-process BM25 search over a corpus JSONL (default: the embedded world's `data/embedded/corpus.jsonl`).

No server, no network: the default real engine on a laptop or CI box, and the evaluation engine of the
embedded world. The index is built once per corpus content and cached on disk (`zerosearch.retriever.index`).
Registered as the mode `local`.
"""

from __future__ import annotations

import time

from zerosearch.retriever.index import BM25Index
from zerosearch.search.base import Doc, SearchRequest, SearchResult
from zerosearch.search.config import SearchConfig
from zerosearch.search.metrics import MeteredBackend, SearchMetrics, blank_result
from zerosearch.search.registry import register_backend


@register_backend("local", keys=("corpus_path", "index_dir"))
class LocalBM25Backend(MeteredBackend):
    name = "local"

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.corpus_path = cfg.resolve_corpus_path()
        self.index = BM25Index.from_corpus(self.corpus_path, cfg.index_dir)
        self.metrics = SearchMetrics()

    @property
    def cache_key(self) -> str:
        return f"local:{self.corpus_path.resolve()}"

    def search(self, requests: list[SearchRequest], topk: int) -> list[SearchResult]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        live = [i for i, r in enumerate(requests) if r.query.strip()]
        t0 = time.perf_counter()
        hits = self.index.search([requests[i].query for i in live], topk)
        per_query = (time.perf_counter() - t0) / max(len(live), 1)
        results = [blank_result() for _ in requests]
        for i, rows in zip(live, hits):
            docs = []
            for passage, _score in rows:
                title, text = passage.title_text
                docs.append(Doc(title=title, text=text[: self.cfg.max_doc_chars]))
            results[i] = SearchResult(docs=docs, ok=True, latency_s=per_query)
        return self._recorded(requests, results)

    def close(self) -> None:
        pass
