"""The one retry policy of the remote search engines, and the JSON-over-HTTP call of the httpx-based ones.

`call_with_retries(fn, cfg, what)` runs `fn(attempt)` at most `1 + search.max_retries` times: a `TransientError`
(timeout, connection error, HTTP 5xx or 429) is retried after `search.backoff_s * 2**attempt` seconds, anything
else (HTTP 4xx, a malformed answer) fails at once. The final failure is a `SearchCallError` whose text says how
many attempts were really made ("failed after 1 attempt(s)" for a 4xx, "after 4" when the retries ran out), and
the backends turn it into an empty `ok=False` result. The original client retried forever.

`post_json(client, url, body)` is one POST classified that way: the simulator (`simulate.py`) and the wiki
retriever (`wiki.py`) use it; SerpAPI (`google.py`) goes through the official client and classifies its
exceptions itself, under the same `call_with_retries`.
"""

from __future__ import annotations

import logging
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
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn(attempt)` (attempt 0-based, so a caller can fail over) until it returns; see the module docstring."""
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except TransientError as exc:
            if attempt >= max_retries:
                raise SearchCallError(what, attempt + 1, exc) from exc
            delay = backoff_s * (2**attempt)
            logger.debug("%s: attempt %d of %d failed (%s), retrying in %.2fs", what, attempt + 1, max_retries + 1,
                         exc, delay)
            sleep(delay)
            attempt += 1
        except Exception as exc:  # noqa: BLE001 - not transient: no retry
            raise SearchCallError(what, attempt + 1, exc) from exc


def post_json(client: httpx.Client, url: str, body: dict,
              explain: Callable[[str, httpx.Response], str] | None = None) -> Any:
    """POST `body` to `url`, return the parsed JSON answer. Transport faults, 5xx and 429 raise `TransientError`;
    another non-200 status raises RuntimeError (its text from `explain(url, response)` when given)."""
    try:
        resp = client.post(url, json=body)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code >= 500 or resp.status_code == 429:
        raise TransientError(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
    if resp.status_code != 200:
        raise RuntimeError(explain(url, resp) if explain else f"{url}: HTTP {resp.status_code}: {resp.text[:300]}")
    try:
        return resp.json()
    except ValueError as exc:
        raise RuntimeError(f"{url}: the answer is not JSON: {resp.text[:200]}") from exc
