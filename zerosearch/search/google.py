"""`google` search through SerpAPI (the official `serpapi` client): the real engine of the paper's evaluation.

Each organic result gives one document (`title`, `snippet`); with `serp_answer_box` the answer box or
knowledge graph, when present, comes first. The key comes from env `SER_API_KEY` (the original's name) or
`SERPAPI_API_KEY`; it is never logged: error texts (which carry request URLs) are masked, the backend's
repr hides it, and a log filter masks it in urllib3's DEBUG lines. `serpapi_base_url` (or env
`SERPAPI_BASE_URL`) points the client elsewhere, e.g. a local server answering in SerpAPI's JSON shape in
tests. Calls run `concurrency` at a time, each with the shared bounded retry policy (`http_retry`); a SerpAPI
"no results" answer is an empty, successful result. Registered as the mode `google`, cached by default.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import serpapi

from zerosearch.search.base import Doc, SearchRequest, SearchResult
from zerosearch.search.config import SearchConfig, mask_secret
from zerosearch.search.http_retry import TransientError, call_with_retries
from zerosearch.search.metrics import MeteredBackend, SearchMetrics, blank_result, failed_result
from zerosearch.search.registry import register_backend

logger = logging.getLogger(__name__)


def docs_from_serp(data: dict, topk: int, answer_box: bool, max_chars: int) -> list[Doc]:
    """SerpAPI JSON -> documents: optional answer box / knowledge graph, then organic title + snippet."""
    docs: list[Doc] = []
    if answer_box:
        box = data.get("answer_box") or {}
        text = box.get("answer") or box.get("snippet") or box.get("result")
        if text:
            docs.append(Doc(title=str(box.get("title", "Answer")), text=str(text)))
        kg = data.get("knowledge_graph") or {}
        if kg.get("description"):
            docs.append(Doc(title=str(kg.get("title", "")), text=str(kg["description"])))
    for item in data.get("organic_results") or []:
        snippet = item.get("snippet") or ""
        if snippet:
            docs.append(Doc(title=str(item.get("title", "")), text=str(snippet)[:max_chars]))
    return docs[:topk]


class _MaskSecret(logging.Filter):
    """Masks the key in records of loggers that print request URLs (urllib3 at DEBUG level)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.secret in msg:
            record.msg, record.args = mask_secret(msg, self.secret), ()
        return True


URL_LOGGERS = ("urllib3.connectionpool",)


@register_backend("google", cached=True, keys=("serpapi_key", "serpapi_base_url", "serp_params", "serp_answer_box",
                                               "timeout_s", "max_retries", "backoff_s", "concurrency"))
class GoogleBackend(MeteredBackend):
    name = "google"

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self._key = cfg.resolve_serpapi_key()
        self.base_url = (cfg.serpapi_base_url or os.environ.get("SERPAPI_BASE_URL") or "").rstrip("/") or None
        self.metrics = SearchMetrics()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="serpapi")
        self._mask = _MaskSecret(self._key)
        for name in URL_LOGGERS:
            logging.getLogger(name).addFilter(self._mask)

    def __repr__(self) -> str:
        return f"GoogleBackend(base_url={self.base_url or serpapi.Client.BASE_DOMAIN!r}, key=***)"

    @property
    def cache_key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.cfg.serp_params.items()))
        return f"google:{extra}:box={int(self.cfg.serp_answer_box)}"

    def _client(self) -> serpapi.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = serpapi.Client(api_key=self._key, timeout=self.cfg.timeout_s)
            if self.base_url:
                client.BASE_DOMAIN = self.base_url  # instance attribute: requests go to the override
            self._local.client = client
        return client

    def _fetch(self, query: str) -> dict:
        params = {"engine": "google", **self.cfg.serp_params, "q": query}
        try:
            return self._client().search(params).as_dict()
        except (serpapi.TimeoutError, serpapi.HTTPConnectionError) as exc:
            raise TransientError(mask_secret(f"{type(exc).__name__}: {exc}", self._key)) from None
        except serpapi.HTTPError as exc:
            msg = mask_secret(f"SerpAPI HTTP {exc.status_code}: {exc.error or exc}", self._key)
            if exc.status_code >= 500 or exc.status_code == 429:
                raise TransientError(msg) from None
            raise RuntimeError(msg) from None
        except ValueError as exc:  # a body that is not JSON
            raise RuntimeError(mask_secret(f"SerpAPI answer is not JSON: {exc}", self._key)) from None

    def _one(self, req: SearchRequest, topk: int) -> SearchResult:
        if not req.query.strip():
            return blank_result()
        t0 = time.perf_counter()
        try:
            data = call_with_retries(
                lambda attempt: self._fetch(req.query.strip()),
                max_retries=self.cfg.max_retries,
                backoff_s=self.cfg.backoff_s,
                what="SerpAPI search",
            )
        except Exception as exc:  # noqa: BLE001 - engine faults become ok=False
            logger.warning("google search for %r: %s", req.query[:80], mask_secret(str(exc), self._key))
            return failed_result(time.perf_counter() - t0)
        docs = docs_from_serp(data, topk, self.cfg.serp_answer_box, self.cfg.max_doc_chars)
        return SearchResult(docs=docs, ok=True, latency_s=time.perf_counter() - t0)

    def search(self, requests: list[SearchRequest], topk: int) -> list[SearchResult]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        results = list(self._executor.map(lambda r: self._one(r, topk), requests))
        return self._recorded(requests, results)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for name in URL_LOGGERS:
            logging.getLogger(name).removeFilter(self._mask)
