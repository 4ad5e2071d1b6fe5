"""The one retry policy of the remote search engines, and the JSON-over-HTTP call of the httpx-based ones.

`call_with_retries(fn, cfg, what)` runs `fn(attempt)` at most `1 + search.max_retries` times: a `TransientError`
(timeout, connection error, HTTP 5xx or 429) is retried after `search.backoff_s * 2**attempt` seconds, anything
else (HTTP 4xx, a malformed answer) fails at once. The final failure is a `SearchCallError` whose text says how
many attempts were really made ("failed after 1 attempt(s)" for a 4xx, "after 4" when the retries ran out), and
the backends turn it into an empty `ok=False` result. The original client retried forever. With `deadline_s`,
the attempts and the waits between them together take at most that long: no retry starts once its backoff would
end past the deadline (the simulator's `search.deadline_s`).

`post_json(client, url, body)` is one POST classified that way: the simulator (`simulate.py`) and the wiki
retriever (`wiki.py`) use it; SerpAPI (`google.py`) goes through the official client and classifies its
exceptions itself, under the same `call_with_retries`. httpx's timeout bounds each network operation, not the call
(a server sending one byte every 2 s never trips a 5 s read timeout), so `post_json` also bounds the whole answer in
wall-clock time: by `deadline` (a `time.monotonic()` instant) when given, else by the client's read timeout. Past
it the connection is shut down and the attempt is a `TransientError`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

logger = logging.getLogger(__name__)
T = TypeVar("T")


class TransientError(Exception):
    """A failure worth retrying (the engine may answer next time)."""


class SearchCallError(RuntimeError):
    """A remote call that failed for good; `attempts` is how many were made, `last` the final error."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what} failed after {attempts} attempt(s): {last}")
        self.attempts = attempts
        self.last = last


def call_with_retries(fn: Callable[[int], T], *, max_retries: int, backoff_s: float, what: str,
                      sleep: Callable[[float], None] = time.sleep, deadline_s: float | None = None) -> T:
    """`fn(attempt)` (attempt 0-based, so a caller can fail over) until it returns; see the module docstring."""
    attempt = 0
    end = None if deadline_s is None else time.monotonic() + deadline_s
    while True:
        try:
            return fn(attempt)
        except TransientError as exc:
            if attempt >= max_retries:
                raise SearchCallError(what, attempt + 1, exc) from exc
            delay = backoff_s * (2**attempt)
            if end is not None and time.monotonic() + delay >= end:
                raise SearchCallError(what, attempt + 1, TransientError(
                    f"{exc} (no retry: the call's deadline of {deadline_s:g} s is spent; raise search.deadline_s)"
                )) from exc
            logger.debug("%s: attempt %d of %d failed (%s), retrying in %.2fs", what, attempt + 1, max_retries + 1,
                         exc, delay)
            sleep(delay)
            attempt += 1
        except Exception as exc:  # noqa: BLE001 - not transient: no retry
            raise SearchCallError(what, attempt + 1, exc) from exc


def post_json(client: httpx.Client, url: str, body: dict,
              explain: Callable[[str, httpx.Response], str] | None = None, *, deadline: float | None = None) -> Any:
    """POST `body` to `url`, return the parsed JSON answer. Transport faults, 5xx, 429 and an answer not complete by
    `deadline` (default: now + the client's read timeout) raise `TransientError`; another non-200 status raises
    RuntimeError (its text from `explain(url, response)` when given)."""
    if deadline is None:
        read = client.timeout.read
        deadline = None if read is None else time.monotonic() + read
    resp = _post_by(client, url, body, deadline)
    if resp.status_code >= 500 or resp.status_code == 429:
        raise TransientError(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
    if resp.status_code != 200:
        raise RuntimeError(explain(url, resp) if explain else f"{url}: HTTP {resp.status_code}: {resp.text[:300]}")
    try:
        return json.loads(resp.content)
    except (ValueError, RecursionError) as exc:
        raise RuntimeError(f"{url}: the answer is not JSON: {resp.text[:200]}") from exc


def _post_by(client: httpx.Client, url: str, body: dict, deadline: float | None) -> httpx.Response:
    """One POST whose whole answer (headers and body) is read by `deadline`, else `TransientError`."""
    budget = None if deadline is None else deadline - time.monotonic()
    if budget is not None and budget <= 0:
        raise TransientError(f"{url}: no time left for another attempt before the deadline")
    late = f"{url}: no complete answer within {budget or 0:.1f} s (search.timeout_s / search.deadline_s)"
    try:
        kwargs = {} if budget is None else {"timeout": _shrunk(client.timeout, budget)}
        with client.stream("POST", url, json=body, **kwargs) as resp:
            watchdog = _shutdown_at(resp, deadline)
            try:
                content = b"".join(_chunks(resp, deadline, late))
            finally:
                if watchdog is not None:
                    watchdog.cancel()
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        if deadline is not None and time.monotonic() >= deadline:
            raise TransientError(late) from exc
        raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc
    return httpx.Response(resp.status_code, content=content, request=resp.request)


def _chunks(resp: httpx.Response, deadline: float | None, late: str):
    for chunk in resp.iter_bytes():
        if deadline is not None and time.monotonic() > deadline:
            raise TransientError(late)
        yield chunk


def _shrunk(timeout: httpx.Timeout, budget: float) -> httpx.Timeout:
    """The client's per-operation timeouts, none longer than `budget`."""
    def cut(t: float | None) -> float:
        return budget if t is None else min(t, budget)

    return httpx.Timeout(connect=cut(timeout.connect), read=cut(timeout.read), write=cut(timeout.write),
                         pool=cut(timeout.pool))


def _shutdown_at(resp: httpx.Response, deadline: float | None) -> threading.Timer | None:
    """Shut the answer's socket down at `deadline`, so that a read blocked on a slow body returns then."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if deadline is None or sock is None:
        return None

    def fire() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), fire)
    timer.daemon = True
    timer.start()
    return timer
