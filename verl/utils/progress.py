"""Progress of the phases of a training step on the console: generation, update, validation.

On a terminal each phase is a tqdm bar with an ETA, under the tracker's step bar. Generation and validation count
finished trajectories (the rollout calls `advance` as turns finish). The update phase counts seconds against the
same phase's duration in the previous step, because the workers do not report their micro-batches: its ETA is that
estimate (the first step shows the elapsed time only). Anywhere else (CI, `| tee`, a file) nothing is redrawn and
no carriage return is written: one short line is printed when a phase ends.

Module-level, like logging: the trainer opens phases (`phase`, `begin` / `end`), the rollout (another package)
calls `advance` without holding a reference to the bar. Everything is a no-op until a console tracker calls
`enable`, so library and test use prints nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class _Phase:
    def __init__(self, name: str, total: int | None, unit: str, expected_s: float | None, stream: TextIO,
                 live: bool) -> None:
        self.name, self.total, self.unit, self.stream = name, total, unit, stream
        self.n = 0
        self.t0 = time.monotonic()
        self.bar = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not live:
            return
        from tqdm import tqdm

        common = dict(desc=name, file=stream, leave=False, position=1, dynamic_ncols=True, mininterval=0.5)
        if total is not None:
            self.bar = tqdm(total=total, unit=unit, **common)
            return
        if expected_s:  # seconds against the last duration of this phase
            self.bar = tqdm(total=max(1, round(expected_s)), unit="s", **common,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} (last step {total}s)")
        else:
            self.bar = tqdm(total=None, unit="s", **common, bar_format="{desc}: {elapsed}")
        self._ticker = threading.Thread(target=self._tick, name=f"progress-{name}", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            bar = self.bar
            if bar is None:
                return
            elapsed = int(time.monotonic() - self.t0)
            if bar.total is not None:
                elapsed = min(elapsed, bar.total - 1)  # over the estimate: stay just short of 100%
            bar.n = max(elapsed, 0)
            bar.refresh()

    def advance(self, k: int) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)

    def close(self, report: bool) -> float:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2.0)
        dt = time.monotonic() - self.t0
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif report:
            from verl.utils.console import console_write

            done = f"{self.n}/{self.total} {self.unit} in " if self.total is not None else ""
            console_write(f"  {self.name}: {done}{dt:.1f}s", self.stream)
        return dt


class Progress:
    """One live phase at a time; beginning a phase ends the previous one."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None
        self.live = False
        self._phase: _Phase | None = None
        self._last_s: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def enable(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        """Show phases on `stream` (stderr): bars when it is a terminal (and the run is not verbose), else lines."""
        from verl.utils import console

        self.stream = stream or sys.stderr
        run = console.current()
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)()) and not (run is not None and run.verbose)
        self.live = live

    def disable(self) -> None:
        self.abort()
        self.stream = None

    def begin(self, name: str, total: int | None = None, unit: str = "traj") -> None:
        with self._lock:
            self._close(report=True)
            if self.stream is not None:
                self._phase = _Phase(name, total, unit, self._last_s.get(name), self.stream, self.live)

    def advance(self, k: int = 1) -> None:
        """`k` more units of the current phase are done (no phase: nothing)."""
        phase = self._phase
        if phase is not None and k > 0:
            phase.advance(k)

    def end(self, name: str | None = None) -> None:
        """End the current phase (only if it is `name`, when given) and report it."""
        with self._lock:
            if self._phase is not None and (name is None or self._phase.name == name):
                self._close(report=True)

    def abort(self) -> None:
        """Close any live bar silently (before a failure report)."""
        with self._lock:
            self._close(report=False)

    def _close(self, report: bool) -> None:
        phase, self._phase = self._phase, None
        if phase is not None:
            if report and phase.total is not None and phase.n < phase.total:  # ended normally: all done
                phase.advance(phase.total - phase.n)
            self._last_s[phase.name] = phase.close(report)

    @contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "traj") -> Iterator[None]:
        self.begin(name, total, unit)
        try:
            yield
        except BaseException:
            self.abort()
            raise
        self.end(name)


_progress = Progress()
enable, disable, begin, advance, end, abort, phase = (_progress.enable, _progress.disable, _progress.begin,
                                                      _progress.advance, _progress.end, _progress.abort,
                                                      _progress.phase)


def enabled() -> bool:
    return _progress.enabled


def is_live() -> bool:
    """True when phases are drawn as live bars (a terminal); False when they are reported as lines, or disabled."""
    return _progress.enabled and _progress.live
