"""Search metrics shared by every backend.

`SearchMetrics` accumulates one record per answered request (thread-safe) and `pop()` returns the
`search/*` scalars logged each training step:
  search/calls                requests answered (cache hits included)
  search/cache_hits           answered from the persistent cache
  search/failures             engine faults (ok=False, rendered "No information available")
  search/latency_s            mean seconds per request that reached an engine (cache hits excluded)
  search/noise_p              mean curriculum noise probability of the requests
  search/noisy_frac           mean fraction of noisy documents the simulator was asked for
  search/real_calls_avoided   simulated answers + cache hits: paid searches that did not happen

The retry policy of the remote engines is `zerosearch.search.http_retry`.
"""

from __future__ import annotations

import logging
import threading

from zerosearch.search.base import SearchRequest, SearchResult

logger = logging.getLogger(__name__)


class SearchMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.calls = self.cache_hits = self.failures = self.avoided = 0
        self.latency_sum = 0.0
        self.latency_n = 0
        self.noise_p_sum = 0.0
        self.noisy_sum = 0.0
        self.noisy_n = 0

    def record(
        self,
        request: SearchRequest,
        result: SearchResult,
        *,
        simulated: bool = False,
        noisy_fraction: float | None = None,
    ) -> None:
        with self._lock:
            self.calls += 1
            self.noise_p_sum += float(request.noise_p)
            if result.cached:
                self.cache_hits += 1
                self.avoided += 1
            else:
                self.latency_sum += result.latency_s
                self.latency_n += 1
            if not result.ok:
                self.failures += 1
            elif simulated:
                self.avoided += 1
            if noisy_fraction is not None:
                self.noisy_sum += noisy_fraction
                self.noisy_n += 1

    def pop(self) -> dict[str, float]:
        """Metrics since the last pop; {} when nothing was searched."""
        with self._lock:
            if self.calls == 0:
                return {}
            out = {
                "search/calls": float(self.calls),
                "search/cache_hits": float(self.cache_hits),
                "search/failures": float(self.failures),
                "search/latency_s": self.latency_sum / max(self.latency_n, 1),
                "search/noise_p": self.noise_p_sum / self.calls,
                "search/real_calls_avoided": float(self.avoided),
            }
            if self.noisy_n:
                out["search/noisy_frac"] = self.noisy_sum / self.noisy_n
            self._reset()
            return out


def blank_result() -> SearchResult:
    """The answer to an empty query: no documents, not an engine fault."""
    return SearchResult(docs=[], ok=True)


def failed_result(latency_s: float = 0.0) -> SearchResult:
    return SearchResult(docs=[], ok=False, latency_s=latency_s)


class MeteredBackend:
    """Shared tail of every backend: record each (request, result) pair and hand out the metrics."""

    metrics: SearchMetrics

    def _recorded(self, requests: list, results: list[SearchResult]) -> list[SearchResult]:
        for req, res in zip(requests, results):
            self.metrics.record(req, res)
        return results

    def pop_metrics(self) -> dict[str, float]:
        return self.metrics.pop()
