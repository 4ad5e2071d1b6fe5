"""Simulated search: an LLM behind an OpenAI-compatible chat-completions server writes the documents.

Modes `simulate_prompt` (a general instruct model, prompted with a one-shot example) and `simulate_sft`
(a fine-tuned simulator, short prompt) differ only in the messages (`sim_prompts`). Each call is sent
the question and gold answers of ITS OWN request (the original indexed them by position among the
searching rows, so after the first turn the simulator saw another sample's question).

Noise: for each request, a seeded RNG draws "noisy" with probability `request.noise_p` (the curriculum),
once per call or, with `per_document_noise`, once per document; a mixed draw costs one useful and one
noisy call whose documents are interleaved in the drawn order (`SearchResult.noisy` is True when any
document was drawn noisy; the metric `search/noisy_frac` is the drawn fraction). Draws happen in request
order on the calling thread, so a seed fixes them regardless of network timing.

Transport: httpx, a thread pool of `concurrency` workers, several servers balanced by least in-flight
calls (ties round-robin); the shared retry policy (`http_retry`: transient faults, i.e. timeouts, connection
errors, 5xx and 429, retried with exponential backoff, here on the next server, at most `max_retries` times; a
4xx fails at once). Time is bounded twice: each attempt's whole answer by `timeout_s` (wall clock, not per byte),
and all attempts of one call with their backoffs by `deadline_s` (default `timeout_s * (1 + max_retries)`).
An answer that is not a chat completion, whose `content` is not text, is empty, or holds no document is a
malformed answer (not retried). Each of these faults gives the request an empty `ok=False` result (rendered
"No information available"), counted in `search/failures`. Never retries forever, never raises for an engine
fault.
Registered as the modes `simulate_prompt` and `simulate_sft` (`zerosearch.search.registry`).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from zerosearch.search.base import Doc, SearchRequest, SearchResult
from zerosearch.search.config import SearchConfig
from zerosearch.search.http_retry import TransientError, call_with_retries, post_json
from zerosearch.search.metrics import SearchMetrics, blank_result, failed_result
from zerosearch.search.registry import register_backend
from zerosearch.search.sim_prompts import NOISY, USEFUL, parse_documents, prompt_messages, sft_messages

logger = logging.getLogger(__name__)


class EndpointPool:
    """Picks the server with the fewest calls in flight; ties go round-robin. Thread-safe."""

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("EndpointPool needs at least one URL (search.ips)")
        self.urls = list(urls)
        self.in_flight = [0] * len(urls)
        self.served = [0] * len(urls)
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def acquire(self, avoid: int | None = None) -> int:
        """Index of the server to call; `avoid` (the one that just failed) is skipped if there are others."""
        with self._lock:
            start = next(self._rr) % len(self.urls)
            order = [(start + j) % len(self.urls) for j in range(len(self.urls))]
            if avoid is not None and len(order) > 1:
                order.remove(avoid)
            i = min(order, key=lambda j: self.in_flight[j])
            self.in_flight[i] += 1
            self.served[i] += 1
            return i

    def release(self, i: int) -> None:
        with self._lock:
            self.in_flight[i] -= 1


@register_backend("simulate_prompt", "simulate_sft", simulated=True,
                  keys=("simulation_llm", "ips", "port", "temperature", "top_p", "max_tokens", "per_document_noise",
                        "seed", "timeout_s", "deadline_s", "max_retries", "backoff_s", "concurrency"))
class SimulationBackend:
    """`SearchBackend` answered by a simulation LLM (modes simulate_prompt / simulate_sft)."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.name = cfg.mode
        self.style = "sft" if cfg.mode == "simulate_sft" else "prompt"
        self.pool = EndpointPool(cfg.simulation_urls)
        self.metrics = SearchMetrics()
        self._rng = random.Random(cfg.seed)
        self._http = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
        )
        self._executor = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="simsearch")
        self._warned_4xx = False

    # ------------------------------------------------------------------------------------------
    def draw_kinds(self, noise_p: float, k: int, seed: int | None = None) -> list[str]:
        """Useful/noisy kind of each of the k documents (one draw, or k with per_document_noise). A request's own
        `seed` makes the draw independent of the order requests arrive in (the asynchronous rollout)."""
        if not 0.0 <= noise_p <= 1.0:
            raise ValueError(f"SearchRequest.noise_p must be in [0, 1], got {noise_p}")
        rng = self._rng if seed is None else random.Random(seed)
        if self.cfg.per_document_noise:
            return [NOISY if rng.random() < noise_p else USEFUL for _ in range(k)]
        return [NOISY if rng.random() < noise_p else USEFUL] * k

    def messages(self, req: SearchRequest, kind: str, k: int) -> list[dict[str, str]]:
        build = sft_messages if self.style == "sft" else prompt_messages
        return build(req.query.strip(), req.question.strip(), [str(a) for a in req.golden_answers], kind, k)

    def search(self, requests: list[SearchRequest], topk: int) -> list[SearchResult]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        plans: list[list[str] | None] = []
        futures = []
        for req in requests:
            if not req.query.strip():
                plans.append(None)
                futures.append({})
                continue
            kinds = self.draw_kinds(req.noise_p, topk, req.seed)
            plans.append(kinds)
            futures.append({kind: self._executor.submit(self._call, req, kind, kinds.count(kind))
                            for kind in (USEFUL, NOISY) if kind in kinds})
        results = []
        for req, kinds, futs in zip(requests, plans, futures):
            result = self._assemble(kinds, {kind: f.result() for kind, f in futs.items()})
            noisy_fraction = None if kinds is None else kinds.count(NOISY) / len(kinds)
            self.metrics.record(req, result, simulated=True, noisy_fraction=noisy_fraction)
            results.append(result)
        return results

    @staticmethod
    def _assemble(kinds: list[str] | None, calls: dict[str, tuple[list[Doc] | None, float]]) -> SearchResult:
        if kinds is None:
            return blank_result()
        latency = max(t for _, t in calls.values())
        if any(docs is None for docs, _ in calls.values()):
            return failed_result(latency)
        pools = {kind: iter(docs) for kind, (docs, _) in calls.items()}
        docs = [d for d in (next(pools[kind], None) for kind in kinds) if d is not None]
        return SearchResult(docs=docs, ok=True, noisy=NOISY in kinds, latency_s=latency)

    # ------------------------------------------------------------------------------------------
    def _call(self, req: SearchRequest, kind: str, k: int) -> tuple[list[Doc] | None, float]:
        """One chat completion -> up to k documents, or None after the retries ran out."""
        body = {
            "model": self.cfg.simulation_llm,
            "messages": self.messages(req, kind, k),
            "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_tokens,
        }
        t0 = time.perf_counter()
        deadline_s = self.cfg.deadline_s or self.cfg.timeout_s * (1 + self.cfg.max_retries)
        end = time.monotonic() + deadline_s
        failed: list[int | None] = [None]  # the server that failed last: the retry goes elsewhere
        try:
            docs = call_with_retries(
                lambda attempt: self._documents(self._post(body, failed, end), k),
                max_retries=self.cfg.max_retries,
                backoff_s=self.cfg.backoff_s,
                what=f"simulation call for {req.query[:60]!r}",
                deadline_s=deadline_s,
            )
        except Exception as exc:  # noqa: BLE001 - every engine fault becomes ok=False
            logger.warning("simulated search: %s", exc)
            return None, time.perf_counter() - t0
        return docs, time.perf_counter() - t0

    def _documents(self, text: str, k: int) -> list[Doc]:
        docs = parse_documents(text, k, self.cfg.max_doc_chars)
        if not docs:
            raise RuntimeError(f"the simulator's answer holds no document: {text[:200]!r}")
        return docs

    def _post(self, body: dict, failed: list[int | None], end: float) -> str:
        i = self.pool.acquire(avoid=failed[0])
        url = self.pool.urls[i] + "/v1/chat/completions"
        try:
            answer = post_json(self._http, url, body, explain=self._explain_4xx,
                               deadline=min(time.monotonic() + self.cfg.timeout_s, end))
        except TransientError:
            failed[0] = i
            raise
        finally:
            self.pool.release(i)
        return chat_content(answer, url)

    def _explain_4xx(self, url: str, resp: httpx.Response) -> str:
        msg = f"{url}: HTTP {resp.status_code}: {resp.text[:300]}"
        if resp.status_code == 404 and not self._warned_4xx:
            self._warned_4xx = True
            try:
                served = [m["id"] for m in self._http.get(url.replace("/chat/completions", "/models")).json()["data"]]
                msg += f" -- search.simulation_llm={self.cfg.simulation_llm!r}; the server serves {served}"
            except Exception:  # noqa: BLE001 - best-effort hint only
                pass
        return msg

    def pop_metrics(self) -> dict[str, float]:
        return self.metrics.pop()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def chat_content(answer: object, url: str) -> str:
    """The text of a chat-completions answer (`choices[0].message.content`); RuntimeError naming what is wrong."""
    try:
        choice = answer["choices"][0]  # type: ignore[index]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(f"{url}: not a chat-completions answer (no choices[0].message.content): "
                           f"{str(answer)[:200]}") from exc
    if content is not None and not isinstance(content, str):
        raise RuntimeError(f"{url}: choices[0].message.content is a {type(content).__name__}, not text: "
                           f"{str(content)[:200]}")
    if not (content or "").strip():
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        hint = " (finish_reason=length: raise search.max_tokens)" if reason == "length" else ""
        raise RuntimeError(f"{url}: the simulator answered with empty content{hint}")
    return content
