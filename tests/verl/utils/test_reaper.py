"""verl.utils.reaper with real processes: SIGTERM / SIGHUP run the cleanup like Ctrl-C, and after a SIGKILL of a
command the reaper stops what it had started, in its own session or process group included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from verl.utils.reaper import exit_code

COMMAND = textwrap.dedent("""
    import os, subprocess, sys, time
    from verl.utils import reaper
    reaper.guard(grace_s=2.0)
    # a child in a session of its own (as a server is) with a grandchild, and one in this group
    sleeper = "import time; time.sleep(600)"
    own = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                            f"subprocess.Popen([sys.executable, '-c', {sleeper!r}]); time.sleep(600)"],
                           start_new_session=True)
    mine = subprocess.Popen([sys.executable, "-c", sleeper])
    try:
        print("ready", flush=True)
        time.sleep(600)
    except KeyboardInterrupt as e:  # as the project's commands do
        code = reaper.exit_code(e)
    finally:
        for p in (own, mine):
            p.kill()
        with open(sys.argv[1], "w") as f:
            f.write("cleaned up")
    sys.exit(code)
""")


def _start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VERL_REAPER_WATCHES"}
    proc = subprocess.Popen([sys.executable, "-c", COMMAND, str(tmp_path / "done")], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    tree = []
    while time.monotonic() < deadline:  # the reaper, the two children and the grandchild
        tree = psutil.Process(proc.pid).children(recursive=True)
        if len(tree) >= 4:
            break
        time.sleep(0.2)
    assert len(tree) >= 4, tree
    time.sleep(1.5)  # the reaper has recorded the tree
    return proc, tree


def _all_gone(procs, within_s: float) -> list:
    _, alive = psutil.wait_procs(procs, timeout=within_s)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_run_the_cleanup(sig, tmp_path):
    proc, tree = _start(tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 128 + sig
    assert (tmp_path / "done").read_text() == "cleaned up"
    assert not _all_gone(tree, 15)


def test_a_sigkill_leaves_nothing_behind(tmp_path):
    proc, tree = _start(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    assert not (tmp_path / "done").exists()  # no cleanup ran in the command itself
    assert not _all_gone(tree, 20), "the reaper left processes of the killed command running"


def test_exit_codes():
    from verl.utils.reaper import Terminated

    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(Terminated(signal.SIGTERM)) == 143 and exit_code(Terminated(signal.SIGHUP)) == 129
    assert isinstance(Terminated(signal.SIGTERM), KeyboardInterrupt)  # every Ctrl-C cleanup path handles it
