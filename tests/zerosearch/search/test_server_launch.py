"""Simulation-server launcher pieces that need no engine start (the real start is in test_simulate_vllm.py)."""

from __future__ import annotations

import sys

import pytest

from zerosearch.retriever.server import free_port
from zerosearch.search.server_launch import is_healthy, server_command, start_simulation_server


def test_server_commands():
    cmd = server_command("/m", "127.0.0.1", 6001, "sim", dtype="float32", tp=2)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[3:] == ["--model", "/m", "--host", "127.0.0.1", "--port", "6001", "--served-model-name", "sim",
                       "--middleware", "zerosearch.body_limit.BodyLimit", "--dtype", "float32",
                       "--tensor-parallel-size", "2"]
    sg = server_command("/m", "0.0.0.0", 6001, "sim", engine="sglang", tp=2, dp=2)
    assert sg[2] == "sglang.launch_server" and sg[-4:] == ["--tp", "2", "--dp", "2"]
    with pytest.raises(ValueError, match="engine must be"):
        server_command("/m", "h", 1, "s", engine="tgi")


def test_health_and_busy_port(retriever):
    assert is_healthy(retriever.url)
    assert not is_healthy(f"http://127.0.0.1:{free_port()}")
    port = int(retriever.url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="already serves"):
        start_simulation_server("/nonexistent-model-dir", port=port)
