"""Named wall-clock timers: each step of `fit()` is logged as `timing_s/<name>`."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timer(name: str, into: dict[str, float]):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[f"timing_s/{name}"] = into.get(f"timing_s/{name}", 0.0) + time.perf_counter() - t0
