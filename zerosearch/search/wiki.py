"""`wiki` search: an HTTP retriever speaking Search-R1's `/retrieve` API (e.g. `zerosearch.retriever.server`
over a Wikipedia dump, or Search-R1's own e5 retriever).

Request `POST {retriever_url}/retrieve {"queries": [...], "topk": k, "return_scores": true}`, answer
`{"result": [[{"document": {"id", "contents": "\\"Title\\"\\ntext"}, "score"}, ...], ...]}`. Queries go in
batches of `retrieval_batch_size`, each under the shared retry policy (`http_retry`); a batch that still fails
gives `ok=False` results for its requests only. Registered as the mode `wiki`, cached by default.
"""

from __future__ import annotations

import logging
import time

import httpx

from verl.utils.config_loader import ConfigError
from zerosearch.retriever.index import split_contents
from zerosearch.search.base import Doc, SearchRequest, SearchResult
from zerosearch.search.config import SearchConfig
from zerosearch.search.http_retry import call_with_retries, post_json
from zerosearch.search.metrics import MeteredBackend, SearchMetrics, blank_result, failed_result
from zerosearch.search.registry import register_backend

logger = logging.getLogger(__name__)


def docs_from_hits(hits: list, max_chars: int) -> list[Doc]:
    """Search-R1 hits (`{"document": {...}, "score"}` or bare documents) -> Docs."""
    docs = []
    for hit in hits:
        doc = hit.get("document", hit) if isinstance(hit, dict) else {}
        if "contents" in doc:
            title, text = split_contents(str(doc["contents"]))
        else:
            title, text = str(doc.get("title", "")), str(doc.get("text", ""))
        if text:
            docs.append(Doc(title=title, text=text[:max_chars]))
    return docs


@register_backend("wiki", cached=True, keys=("retriever_url", "retrieval_batch_size", "timeout_s", "max_retries",
                                             "backoff_s"))
class WikiBackend(MeteredBackend):
    name = "wiki"

    @staticmethod
    def check_config(cfg: SearchConfig) -> None:
        if not cfg.retriever_url.startswith(("http://", "https://")):
            raise ConfigError(f"search.retriever_url must be an http(s) URL, got {cfg.retriever_url!r}")

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.url = cfg.retriever_url.rstrip("/") + "/retrieve"
        self.metrics = SearchMetrics()
        self._http = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s))

    @property
    def cache_key(self) -> str:
        return f"wiki:{self.cfg.retriever_url.rstrip('/')}"

    def _post(self, queries: list[str], topk: int) -> list[list]:
        answer = post_json(self._http, self.url, {"queries": queries, "topk": topk, "return_scores": True})
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise RuntimeError(f"{self.url}: expected 'result' with {len(queries)} lists, got {str(answer)[:200]}")
        return result

    def search(self, requests: list[SearchRequest], topk: int) -> list[SearchResult]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        results = [blank_result() for _ in requests]
        live = [i for i, r in enumerate(requests) if r.query.strip()]
        bs = self.cfg.retrieval_batch_size
        for start in range(0, len(live), bs):
            batch = live[start:start + bs]
            t0 = time.perf_counter()
            try:
                rows = call_with_retries(
                    lambda attempt, b=batch: self._post([requests[i].query for i in b], topk),
                    max_retries=self.cfg.max_retries,
                    backoff_s=self.cfg.backoff_s,
                    what="wiki retrieval",
                )
            except Exception as exc:  # noqa: BLE001 - engine faults become ok=False
                logger.warning("wiki retrieval of %d queries: %s", len(batch), exc)
                for i in batch:
                    results[i] = failed_result((time.perf_counter() - t0) / len(batch))
                continue
            per_query = (time.perf_counter() - t0) / len(batch)
            for i, hits in zip(batch, rows):
                docs = docs_from_hits(hits if isinstance(hits, list) else [], self.cfg.max_doc_chars)[:topk]
                results[i] = SearchResult(docs=docs, ok=True, latency_s=per_query)
        return self._recorded(requests, results)

    def close(self) -> None:
        self._http.close()
