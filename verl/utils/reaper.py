"""Nothing a command starts outlives it: signals handled like Ctrl-C, children tied to their parent, and a reaper.

A command that starts servers, engines or a Ray cluster (the train scripts' launcher, the trainer, the evaluation
and inference CLIs, the simulator tools) calls `guard()` first:
- SIGTERM and SIGHUP (what `timeout`, SLURM, Kubernetes and a closed terminal send) raise `Terminated`, a
  `KeyboardInterrupt`, in the main thread, so the same `finally:` blocks run as on Ctrl-C: servers stopped, Ray shut
  down. `exit_code(exc)` is the conventional 128 + signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
- A reaper process watches the command: every half second it records the command's whole process tree (Ray's
  workers start in process groups of their own and the servers in sessions of their own, so no single group holds
  them all) and, once the command is gone, however it ended (SIGKILL included), it sends SIGTERM to every recorded
  process still alive, waits `grace_s`, and SIGKILLs the rest. Ray's own processes (raylet, GCS, its agents, log
  monitor and workers) get SIGKILL after `RAY_GRACE_S` instead: their driver is gone, they have nothing to save, and
  the dashboard and runtime-env agents ignore SIGTERM (they exit on their own only about a minute after their raylet).
  A process is matched by pid and start time, so a reused pid is never touched. One reaper per command: a command
  started under a guarded one (the trainer under the launcher) gets its own, so that what it started is stopped
  when it dies even while its parent lives on.
`pdeathsig_preexec(sig)` is a `preexec_fn` for `subprocess.Popen` on Linux: the child gets `sig` when its parent
dies (prctl PR_SET_PDEATHSIG), the first line of defence when the parent is SIGKILLed.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

logger = logging.getLogger(__name__)

ENV_WATCHED = "VERL_REAPER_WATCHES"  # pid of the process whose tree a reaper already watches
PR_SET_PDEATHSIG = 1
POLL_S = 0.5  # how often the reaper records the tree, and notices that the command is gone
RAY_GRACE_S = 1.0  # Ray's processes: SIGTERM, this long, SIGKILL
_RAY_MARKERS = ("/ray/core/src/ray/", "/ray/dashboard/", "/ray/_private/", "/ray/autoscaler/")
HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that cleanup runs; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _raise_terminated(signum: int, frame) -> None:
    for sig in HANDLED:  # a second signal during cleanup must not interrupt the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """SIGTERM / SIGHUP -> `Terminated` in the main thread (no-op elsewhere: Python allows handlers there only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        signal.signal(sig, _raise_terminated)


def pdeathsig_preexec(sig: int = signal.SIGTERM):
    """A `preexec_fn`: the child receives `sig` when the process that started it dies (Linux; elsewhere a no-op)."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            try:
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
            except OSError:
                pass

    return preexec


def start_reaper(pid: int | None = None, grace_s: float = 5.0) -> subprocess.Popen | None:
    """Start a reaper of `pid`'s process tree (default: this process), unless one already watches that process. A
    reaper of a parent does not count: it acts only when the parent ends (a notebook or a test process that called
    `guard()` may live on long after a command it started was SIGKILLed)."""
    pid = os.getpid() if pid is None else pid
    if os.environ.get(ENV_WATCHED) == str(pid):
        return None
    os.environ[ENV_WATCHED] = str(pid)  # a second guard() in this process starts no second reaper
    try:
        return subprocess.Popen([sys.executable, "-m", "verl.utils.reaper", "--watch", str(pid), "--grace",
                                 str(grace_s)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as e:  # no reaper is no reason to refuse the run
        logger.warning("could not start the process reaper: %s", e)
        return None


def guard(grace_s: float = 5.0) -> None:
    """What a command that starts processes calls first: signal handlers and a reaper of its process tree."""
    install_signal_handlers()
    start_reaper(grace_s=grace_s)


# ------------------------------------------------------------------------------------------------ the reaper itself
def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tree(root: int, seen: dict[int, float], me: int) -> dict[int, float]:
    """pid -> start time of every descendant of `root`, and of the recorded processes that still run (re-parented to
    init when their parent died, they keep their own children), from one scan of the process table."""
    import psutil

    children: dict[int, list[int]] = {}
    started: dict[int, float] = {}
    for p in psutil.process_iter(["pid", "ppid", "create_time"]):
        info = p.info
        started[info["pid"]] = info["create_time"] or 0.0
        if info["ppid"] is not None:
            children.setdefault(info["ppid"], []).append(info["pid"])
    roots = [root] + [q for q, t in seen.items() if abs(started.get(q, -1.0) - t) < 0.01]  # same pid, same process
    out, todo = {}, roots
    while todo:
        for child in children.get(todo.pop(), ()):
            if child != me and child not in out:
                out[child] = started[child]
                todo.append(child)
    return out


def is_ray_process(cmdline: list[str]) -> bool:
    """Ray's daemons (raylet, gcs_server, agents, log monitor) and its workers (retitled `ray::<name>`)."""
    if not cmdline:
        return False
    if cmdline[0].startswith("ray::"):
        return True
    return any(m in arg for arg in cmdline[:3] for m in _RAY_MARKERS)


def _stop(procs: list, grace_s: float) -> None:
    """SIGTERM each, wait up to `grace_s` for them to exit, SIGKILL the rest (and wait for those briefly)."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(procs, timeout=grace_s)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=5)


def reap(pid: int, grace_s: float, poll_s: float = POLL_S) -> int:
    """Watch `pid`; when it is gone, stop what remains of its recorded tree. Returns how many processes it stopped."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    me = os.getpid()
    seen: dict[int, float] = {}  # pid -> start time, of everything the tree ever held
    while _alive(root):
        try:
            # from the root, and from recorded processes whose parent died (re-parented to init)
            seen.update(_tree(pid, seen, me))
        except psutil.Error:
            pass
        time.sleep(poll_s)
    left = []
    for child, created in seen.items():
        try:
            proc = psutil.Process(child)
            if abs(proc.create_time() - created) < 0.01 and _alive(proc):
                left.append(proc)
        except psutil.Error:
            pass
    ray, other = [], []
    for proc in left:
        try:
            (ray if is_ray_process(proc.cmdline()) else other).append(proc)
        except psutil.Error:
            pass
    import threading

    others = threading.Thread(target=_stop, args=(other, grace_s), daemon=True)  # servers: their full grace
    others.start()
    _stop(ray, min(RAY_GRACE_S, grace_s))
    others.join()
    return len(left)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stop what remains of a process tree once its root is gone")
    ap.add_argument("--watch", type=int, required=True)
    ap.add_argument("--grace", type=float, default=5.0)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for the command, not for its reaper
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reap(a.watch, a.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
