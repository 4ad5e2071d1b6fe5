"""Secrets and exposure: fake SerpAPI and W&B keys reach no written file, and every server we start binds 127.0.0.1
and bounds what one request may cost.

The fake keys (SER_API_KEY, SERPAPI_API_KEY, WANDB_API_KEY in the environment, `+search.serpapi_key=...` as an
override; `conftest.py`) are in play in the fault chain of `test_faults.py`: one real run as users run it
(`python -m zerosearch.launch grpo KEY VALUE ...`: launcher, trainer, Ray and its FSDP worker, HF rollouts, BM25
search for training, Google for validation against a fake SerpAPI server on 127.0.0.1, W&B offline), killed and
resumed six times; at its end every file it wrote is read as bytes and searched for each key and its base64 forms:
the run dir (train.log, metrics, trajectory dumps, saved config, W&B files, checkpoints with their binary weights and
optimizer state), the search cache, its Ray session dirs (/tmp/ray/session_*) and each session's output. Here: the
output and the files of a run that fails on a bad override with the same keys. (W&B files on their own are covered by
tests/verl/utils/test_tracking_wandb.py.)

Exposure: the simulation server (`start_simulation_server`, and `scripts/launch_simulation_server.sh`) listens on
127.0.0.1 only (psutil), and refuses a 5 MB request body fast with 413 (`zerosearch.body_limit`), staying
healthy. Ray, which the trainer starts, listens on all interfaces (its own design; not checked here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from zerosearch.retriever.server import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RUN = ["ROLLOUT", "hf", "SEARCH_MODE", "local", "TRAIN_BATCH_SIZE", "2", "ROLLOUT_N", "2", "TOTAL_STEPS", "1",
       "LOGGER", "console,jsonl,wandb", "MAX_TURNS", "1", "TOPK", "2"]


def _listening(pid: int) -> set[tuple[str, str]]:
    """(bound address, process name) of the LISTEN TCP sockets of `pid` and its descendants."""
    found = set()
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in family:
        try:
            found |= {(c.laddr.ip, p.name()) for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_fake_keys_reach_no_file_a_failed_start_writes(tmp_path, fake_keys):
    """A bad override with the keys in play: exit 2 naming the key, and no key in its output or on disk."""
    bad = tmp_path / "bad"
    with open(tmp_path / "bad.out", "wb") as f:
        rc = subprocess.run([sys.executable, "-m", "zerosearch.launch", "grpo", *RUN, *fake_keys.ARGS, "CHECKPOINT_DIR",
                             str(bad), "search.topk=abc"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            env=fake_keys.env(), timeout=300).returncode
    out = (tmp_path / "bad.out").read_text(errors="replace")
    assert rc == 2 and "search.topk" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    n, leaks = fake_keys.scan([tmp_path])
    assert n >= 1 and not leaks, leaks[:10]


def test_simulation_server_listens_on_loopback_only(vllm_server):
    found = _listening(vllm_server.process.pid)
    assert found, "the simulation server listens on nothing"
    assert {ip for ip, _ in found} == {"127.0.0.1"}, found


def test_launch_script_serves_on_loopback_by_default(tmp_path):
    """vLLM binds its port before it loads the model: the address is checked then, and the server stopped."""
    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts/launch_simulation_server.sh"), "PORT", str(port)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any(True for _ in _listening(proc.pid)):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the launch script's server never listened"
            time.sleep(0.5)
        found = _listening(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert {ip for ip, _ in found} == {"127.0.0.1"}, found


def test_simulation_server_refuses_a_5mb_body(vllm_server):
    """Without the limit vLLM reads any body: a 5 MB prompt got 400 from its length check (after reading and parsing
    it; 50 MB: 0.8 s, +141 MiB), a 5 MB `user` field was served (200)."""
    hi = [{"role": "user", "content": "Say hi"}]
    for body in ({"model": "embedded", "messages": [{"role": "user", "content": "word " * (1 << 20)}], "max_tokens": 4},
                 {"model": "embedded", "messages": hi, "max_tokens": 4, "user": "u" * (5 << 20)}):
        data = json.dumps(body).encode()
        assert len(data) > 5 * 10**6
        rss0 = _rss(vllm_server.process.pid)
        t0 = time.monotonic()
        resp = httpx.post(vllm_server.url + "/v1/chat/completions", content=data,
                          headers={"content-type": "application/json"}, timeout=120)
        elapsed = time.monotonic() - t0
        print(f"5 MB body: HTTP {resp.status_code} in {elapsed:.2f} s, {resp.text[:120]!r}; server tree RSS "
              f"{rss0 / 2**20:.0f} -> {_rss(vllm_server.process.pid) / 2**20:.0f} MiB")
        assert resp.status_code == 413 and "request body over" in resp.text and elapsed < 5.0
        assert httpx.get(vllm_server.url + "/health", timeout=5).status_code == 200
    small = httpx.post(vllm_server.url + "/v1/chat/completions", timeout=120,
                       json={"model": "embedded", "messages": hi, "max_tokens": 4})
    assert small.status_code == 200


def _rss(pid: int) -> int:
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
