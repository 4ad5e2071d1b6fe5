"""Fault: the simulation server goes away mid-run; training goes on with fallback documents and recovers.

The shared real vLLM OpenAI server (the embedded model, `tests/conftest.py`) is reached through a TCP forwarder, a
process of its own on a free 127.0.0.1 port: that process is the simulation endpoint of a short GRPO run of the
launcher (HF rollout, every trajectory starts with a search, no validation, no checkpoint) with small
`search.timeout_s` / `max_retries` / `backoff_s`. Once step 1 is logged the forwarder is SIGKILLed (open connections
reset, new ones refused: what the client sees of a killed server); once a step logs `search/failures > 0` it is
started again on the same port (restarting vLLM itself would cost CI minutes and test nothing more of the client).
The run must finish (exit 0); the steps trained while the endpoint was down count their failed searches in
`search/failures`, still have scores (the fallback "No information available" documents), and took no longer than a
normal step plus the bounded retries of each search turn; the steps that started after it was back search without a
failure (no dead pooled connection is kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS, TURNS = 4, 1
TIMEOUT_S, RETRIES, BACKOFF_S = 20.0, 1, 0.2
CALL_BOUND_S = TIMEOUT_S * (1 + RETRIES) + BACKOFF_S  # one search call, all attempts and the backoff
RUN = ["ROLLOUT", "hf", "SEARCH_MODE", "simulate_prompt", "SIMULATION_LLM", "embedded", "IP", "127.0.0.1",
       "TRAIN_BATCH_SIZE", "2", "ROLLOUT_N", "2", "MAX_TURNS", str(TURNS), "TOPK", "2", "TOTAL_STEPS", str(STEPS),
       "SAVE_FREQ", "-1", "TEST_FREQ", "-1", "VAL_BEFORE_TRAIN", "false", "LOGGER", "console,jsonl",
       "data.assistant_prefix='<search>'", "data.max_response_length=48", "data.max_obs_length=64",
       "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "search.max_tokens=64",
       f"search.timeout_s={TIMEOUT_S}", f"search.max_retries={RETRIES}", f"search.backoff_s={BACKOFF_S}"]


FORWARDER = """
import asyncio, sys

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

async def handle(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def _forward(port: int, target_port: int) -> subprocess.Popen:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target_port in a process of its own, once it listens."""
    proc = subprocess.Popen([sys.executable, "-c", FORWARDER, str(port), str(target_port)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


class Steps:
    """The records of metrics.jsonl and when each was first seen (monotonic), polled every 0.1 s."""

    def __init__(self, path: Path, out: Path) -> None:
        self.path, self.out = path, out
        self.records: list[dict] = []
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.read()
            time.sleep(0.1)

    def read(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line being written
                break
        now = time.monotonic()
        for r in records:
            self.seen.setdefault(r["step"], now)
        self.records = records

    def wait(self, cond, proc: subprocess.Popen, timeout_s: float, what: str) -> dict:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            hit = next((r for r in self.records if cond(r)), None)
            if hit is not None:
                return hit
            assert proc.poll() is None, \
                f"the run ended (exit {proc.returncode}) before {what}: {self.out.read_text(errors='replace')[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout_s} s: {self.records}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.read()


@pytest.mark.slow
def test_simulator_killed_mid_run_training_continues_and_recovers(vllm_server, tmp_path):
    from urllib.parse import urlparse

    from zerosearch.retriever.server import free_port

    t_start = time.monotonic()
    port = free_port()
    endpoint = _forward(port, urlparse(vllm_server.url).port)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_REAPER_WATCHES", "ZEROSEARCH_FAULT"))}
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "zerosearch.launch", "grpo", *RUN, "PORT", str(port), "CHECKPOINT_DIR", str(run)]
    out_path = tmp_path / "launcher.log"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    steps = Steps(run / "logs" / "metrics.jsonl", out_path)
    again = None
    try:
        first = steps.wait(lambda r: r["step"] == 1, proc, 300, "step 1")
        assert first["search/failures"] == 0 and first["search/calls"] > 0, first
        t_kill = time.monotonic()
        endpoint.kill()  # the forwarder is one process: its sockets close with it
        endpoint.wait()
        hit = steps.wait(lambda r: r["step"] > 1 and r.get("search/failures", 0) > 0, proc, 120,
                         "a step with search/failures > 0")
        t_restart = time.monotonic()
        again = _forward(port, urlparse(vllm_server.url).port)
        t_back = time.monotonic()
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        steps.stop()
        for p in (endpoint, again):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    log = out_path.read_text(errors="replace")
    assert rc == 0, log[-3000:]
    records = {r["step"]: r for r in steps.records}
    assert sorted(records) == list(range(1, STEPS + 1)), sorted(records)
    seen = steps.seen
    # the steps trained while the server was down (began after the kill, ended before the restart began)
    down = [s for s in records if s > 1 and seen[s - 1] >= t_kill and seen[s] <= t_restart]
    down = down or [hit["step"]]
    # the steps that began once the server answered again
    back = [s for s in records if s > 1 and seen[s - 1] >= t_back]
    timing = {s: round(records[s]["timing_s/step"], 1) for s in records}
    print(f"start to step 1 {t_kill - t_start:.0f} s, restart {t_back - t_restart:.1f} s; "
          f"down {down}, back {back}; step seconds {timing}; "
          f"failures {[records[s].get('search/failures') for s in records]}; total {time.monotonic() - t_start:.0f} s")
    assert back, "no step began after the endpoint was back: raise STEPS"
    normal = max(records[s]["timing_s/step"] for s in [1, *back])
    for s in down:
        r = records[s]
        assert r["search/failures"] > 0 and r["search/failures"] <= r["search/calls"], r
        assert "critic/score/mean" in r and r["actor/pg_loss"] == r["actor/pg_loss"], r  # trained on fallbacks
        assert r["search/latency_s"] <= CALL_BOUND_S + 1.0, r  # retries bounded, not a hang
        assert r["timing_s/step"] <= normal + TURNS * (CALL_BOUND_S + 1.0) + 5.0, (s, timing)
    for s in back:
        assert records[s]["search/failures"] == 0 and records[s]["search/calls"] > 0, records[s]
