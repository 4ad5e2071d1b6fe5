"""Nothing the launcher starts outlives it: SIGTERM while the simulation server starts, SIGTERM during training,
SIGKILL during training. Each time the test records the launcher's whole process tree while it runs (server, engine
processes, trainer, Ray's daemons and workers, the reaper) and asserts that within 30 s none of it is left and the
server's port is free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _launch(process_tree, tmp_path: Path, port: int, *keys: str) -> tuple[subprocess.Popen, object]:
    cmd = [sys.executable, "-m", "zerosearch.launch", "grpo", "PORT", str(port), "CHECKPOINT_DIR",
           str(tmp_path / "run"), "ROLLOUT", "hf", "TOTAL_STEPS", "3", "TRAIN_BATCH_SIZE", "2", "ROLLOUT_N", "2",
           "VAL_BEFORE_TRAIN", "false", "TEST_FREQ", "-1", "SAVE_FREQ", "-1", "LOGGER", "console", *keys]
    env = {k: v for k, v in os.environ.items() if k != "VERL_REAPER_WATCHES"}
    log = open(tmp_path / "launcher.out", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, process_tree(proc.pid)


def _wait_for_training(tmp_path: Path, tree, timeout_s: float) -> None:
    """Until the FSDP worker is built (its 'ready' line is in the run log) and a step has started."""
    log = tmp_path / "run" / "logs" / "train.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and " ready on " in log.read_text(errors="replace"):
            time.sleep(5.0)  # into the first step
            return
        time.sleep(0.5)
    raise AssertionError(f"training did not start: {tree.names()}")


def _check_clean(proc: subprocess.Popen, tree, port: int, tmp_path: Path, expect_rc: int | None) -> None:
    rc = proc.wait(timeout=60)
    left = tree.left_after(30.0)
    out = (tmp_path / "launcher.out").read_text(errors="replace")
    assert not left, f"left running 30 s after the launcher ended: {left}\n{out[-2000:]}"
    assert _port_free(port)
    if expect_rc is not None:
        assert rc == expect_rc, out[-3000:]


def test_sigterm_while_the_simulation_server_starts(tmp_path, process_tree):
    port = _free_port()
    proc, tree = _launch(process_tree, tmp_path, port, "SEARCH_MODE", "simulate_prompt")
    tree.wait_for("api_server", 120)
    tree.wait_for("EngineCore", 120)  # the server is starting its engine: it ignores SIGTERM at this point
    proc.send_signal(signal.SIGTERM)
    _check_clean(proc, tree, port, tmp_path, 143)
    assert "stopped (SIGTERM) while starting the simulation server" in (tmp_path / "launcher.out").read_text()


def test_sigterm_during_training_with_the_simulation_server(tmp_path, process_tree):
    port = _free_port()
    proc, tree = _launch(process_tree, tmp_path, port, "SEARCH_MODE", "simulate_prompt")
    _wait_for_training(tmp_path, tree, 600)
    assert any("api_server" in n for n in tree.names()) and any("ray::" in n for n in tree.names())
    proc.send_signal(signal.SIGTERM)
    _check_clean(proc, tree, port, tmp_path, 143)


def test_sigkill_during_training(tmp_path, process_tree):
    port = _free_port()
    proc, tree = _launch(process_tree, tmp_path, port, "SEARCH_MODE", "local")
    _wait_for_training(tmp_path, tree, 600)
    assert any("raylet" in n for n in tree.names()) and any("ray::" in n for n in tree.names())
    proc.kill()  # no cleanup can run in the launcher: the trainer's death signal and the reaper must do it
    _check_clean(proc, tree, port, tmp_path, None)
