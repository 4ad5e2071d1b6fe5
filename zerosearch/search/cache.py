"""Persistent search cache (sqlite) in front of real engines (google, wiki, local).

Paid searches are cached across runs and processes: key (engine, query, k), where `engine` names the
engine and whatever changes its answers (the retriever URL, SerpAPI parameters). Queries are keyed after
whitespace normalisation. Only successful results are stored, so a failure is retried next time.
Simulated modes are never cached: their answers are random useful/noisy draws.

The connection is shared by threads under a lock; WAL journaling lets several processes share the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from zerosearch.search.base import Doc, SearchBackend, SearchRequest, SearchResult
from zerosearch.search.metrics import SearchMetrics

logger = logging.getLogger(__name__)


def normalize_query(query: str) -> str:
    return " ".join(query.split())


class SearchCache:
    """Thread-safe sqlite map (engine, query, k) -> documents."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS search_cache (engine TEXT NOT NULL, query TEXT NOT NULL, "
                "k INTEGER NOT NULL, docs TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (engine, query, k))"
            )

    def get(self, engine: str, query: str, k: int) -> list[Doc] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT docs FROM search_cache WHERE engine=? AND query=? AND k=?", (engine, normalize_query(query), k)
            ).fetchone()
        if row is None:
            return None
        return [Doc(title=d["title"], text=d["text"]) for d in json.loads(row[0])]

    def put(self, engine: str, query: str, k: int, docs: list[Doc]) -> None:
        payload = json.dumps([{"title": d.title, "text": d.text} for d in docs], ensure_ascii=False)
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO search_cache VALUES (?, ?, ?, ?, ?)",
                (engine, normalize_query(query), k, payload, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM search_cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend:
    """Wraps a real engine: answers from the cache when it can, asks the engine for the rest."""

    def __init__(self, inner: SearchBackend, cache: SearchCache, engine_key: str | None = None) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.engine_key = engine_key or getattr(inner, "cache_key", inner.name)
        self.metrics = SearchMetrics()

    def search(self, requests: list[SearchRequest], topk: int) -> list[SearchResult]:
        results: list[SearchResult | None] = [None] * len(requests)
        misses = []
        for i, req in enumerate(requests):
            docs = self.cache.get(self.engine_key, req.query, topk) if req.query.strip() else None
            if docs is not None:
                results[i] = SearchResult(docs=docs, ok=True, cached=True)
            else:
                misses.append(i)
        if misses:
            fresh = self.inner.search([requests[i] for i in misses], topk)
            for i, res in zip(misses, fresh):
                results[i] = res
                if res.ok and requests[i].query.strip():
                    self.cache.put(self.engine_key, requests[i].query, topk, res.docs)
        self.inner.pop_metrics()  # the wrapper records every request itself, hits included
        for req, res in zip(requests, results):
            self.metrics.record(req, res)
        return results  # type: ignore[return-value]

    def pop_metrics(self) -> dict[str, float]:
        return self.metrics.pop()

    def close(self) -> None:
        self.inner.close()
        self.cache.close()
