"""The search-backend protocol: one small interface for simulated and real engines.

A backend answers a batch of queries with top-k documents. Every request carries its own sample's
question and gold answers (simulators need them; the original sent the wrong sample's after the first
turn) and the noise probability of the current curriculum step (real engines ignore it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

NO_INFORMATION = "No information available"


@dataclass
class Doc:
    title: str
    text: str


@dataclass
class SearchRequest:
    query: str
    question: str = ""  # the sample's own question
    golden_answers: list[str] = field(default_factory=list)
    noise_p: float = 0.0  # probability that a simulator writes noisy documents for this call
    # the noise draw's seed (the rollout derives it from the rollout seed, the row and the turn, so the draw does
    # not depend on the order in which requests reach the backend); None: the backend's own seeded stream
    seed: int | None = None


@dataclass
class SearchResult:
    docs: list[Doc]
    ok: bool = True  # False: the engine failed and `docs` is empty (rendered as NO_INFORMATION)
    noisy: bool = False  # a simulator wrote noisy documents
    cached: bool = False
    latency_s: float = 0.0


def format_docs(result: SearchResult) -> str:
    """Render documents the way Search-R1 / ZeroSearch policies read them: `Doc i(Title: t) text`."""
    if not result.docs:
        return NO_INFORMATION
    return "\n".join(f"Doc {i + 1}(Title: {d.title}) {d.text}" for i, d in enumerate(result.docs))


@runtime_checkable
class SearchBackend(Protocol):
    name: str

    def search(self, requests: list[SearchRequest], topk: int) -> list[SearchResult]:
        """One result per request, same order; never raises for an engine fault (ok=False instead)."""
        ...

    def pop_metrics(self) -> dict[str, float]:
        """`search/*` metrics accumulated since the last call (calls, cache_hits, failures, latency_s, ...)."""
        ...

    def close(self) -> None:
        ...
