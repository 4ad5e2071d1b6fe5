"""How well a simulator (or any engine) does its two jobs, on held-out queries with known answers.

For each query it is asked once for useful documents (noise_p 0) and once for noisy ones (noise_p 1):
- `useful_hit`: share of useful calls where some document contains a gold answer (want high: the policy can
  answer from them);
- `noisy_leak`: share of noisy calls where some document contains a gold answer (want low: noise that gives the
  answer away is no noise, and the curriculum's hard end becomes easy);
- `docs_per_call`: documents parsed per call, over k (want 1.0: the simulator keeps the layout and the count);
- `failed`: calls that returned nothing usable (engine faults).
A real engine ignores noise_p, so its `noisy_leak` equals its `useful_hit`: the reference line of the report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from zerosearch.search.base import SearchBackend, SearchRequest, SearchResult
from zerosearch.simulator.collect import Query, contains_answer


def _hit(result: SearchResult, golds: Iterable[str]) -> bool:
    return any(contains_answer(f"{d.title} {d.text}", golds) for d in result.docs)


def score(backend: SearchBackend, queries: list[Query], k: int) -> dict[str, float]:
    """The metrics above for `backend` on `queries` (deduplicated)."""
    queries = list(dict.fromkeys(queries))
    if not queries:
        raise ValueError("no queries to score the simulator on")
    out: dict[str, float] = {"queries": float(len(queries))}
    t0 = time.perf_counter()
    for kind, noise_p in (("useful", 0.0), ("noisy", 1.0)):
        reqs = [SearchRequest(q.query, q.question, list(q.golden_answers), noise_p=noise_p) for q in queries]
        results = backend.search(reqs, k)
        ok = [(q, r) for q, r in zip(queries, results) if r.ok and r.docs]
        rate = sum(_hit(r, q.golden_answers) for q, r in ok) / max(len(ok), 1)
        out["useful_hit" if kind == "useful" else "noisy_leak"] = rate
        out[f"{kind}_docs_per_call"] = sum(min(len(r.docs), k) for _, r in ok) / max(len(ok), 1) / k
        out[f"{kind}_failed"] = float(len(queries) - len(ok))
    out["seconds"] = time.perf_counter() - t0
    return out


def queries_from_rows(rows: list[dict], split: str = "val", limit: int = 0) -> list[Query]:
    """Distinct queries of the collected rows of one split (`collect` output)."""
    seen = dict.fromkeys(Query(r["query"], r["question"], tuple(r["golden_answers"]), r.get("data_source", ""))
                         for r in rows if r.get("split", "train") == split)
    qs = list(seen)
    return qs[:limit] if limit > 0 else qs
