"""The run log, the quiet console, progress output and the failure paragraph, on real Ray workers and failures.

Each driver scenario runs in a subprocess, this file run as a script (`python test_console.py SCENARIO DIR`), as
`python -m verl.trainer.main_ppo` runs: its stderr is the console, `DIR/logs/train.log` the run log.
- `workers`: a worker group whose workers print, log, warn and spawn a child process that prints; then rank 0
  raises a Python exception (RayTaskError) and rank 1 is SIGKILLed (ActorDiedError). One Ray start.
- `oom`: Ray's real memory monitor kills a worker that allocates memory, with `RAY_memory_usage_threshold` set just
  above the machine's use at the start and `RAY_memory_monitor_refresh_ms=100`. A second Ray start (its own env).
The older wording of Ray's memory message (before Ray 2.5x) is checked on a fixture string written after it.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHILD = "import sys; print('child-stdout'); print('child-stderr', file=sys.stderr)"


class Chatty:
    """A worker that writes everywhere, then fails in the two ways a Ray worker can."""

    def chat(self) -> int:
        print("chatty-stdout", flush=True)
        log = logging.getLogger("tests.chatty")
        log.info("chatty-info")
        log.warning("chatty-warning rank %s", os.environ["RANK"])
        warnings.warn("chatty-future", FutureWarning, stacklevel=1)
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        return os.getpid()

    def boom(self) -> int:
        if os.environ["RANK"] == "0":
            raise ValueError("bad value 42")
        return 0

    def die(self) -> int:
        if os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return 0


class Hog:
    def hog(self) -> int:
        chunks = []
        for _ in range(40):  # up to 4 GB, 100 MB at a time (touched), until Ray's monitor kills this process
            chunks.append(b"\x01" * (100 << 20))
            time.sleep(0.05)
        time.sleep(5)
        return len(chunks)


def _cfg(run_dir: Path):
    from verl.trainer.config import load_config

    return load_config({"trainer": {"default_local_dir": str(run_dir), "device": "cpu", "n_gpus_per_node": 1}})


def _scenario(name: str, run_dir: Path) -> int:
    import ray

    from verl.single_controller.ray_worker_group import RayWorkerGroup
    from verl.utils import checkpoint as ckpt
    from verl.utils import console, failure, progress

    console.setup_run_logging(run_dir / "logs", "WARNING", verbose=False)
    shown: list[str] = []
    write = console.console_write

    def recording_write(text, stream=None):  # what reached the console, to wait for Ray's stream
        shown.append(text)
        write(text, stream)

    console.console_write = recording_write
    cfg = _cfg(run_dir)
    if name == "oom":
        console.init_ray(num_cpus=1, include_dashboard=False)
        try:
            RayWorkerGroup(Hog, 1, name="actor_rollout_ref").execute_all("hog")
        except Exception as e:
            failure.report_failure(e, cfg)
            return 1
        return 0
    ckpt.mark_complete(run_dir, 2, {"global_step": 2})
    logging.getLogger("tests.driver").info("driver-info")
    logging.getLogger("tests.driver").warning("driver-warning")
    warnings.warn("driver-future", FutureWarning, stacklevel=1)
    print("driver-print", flush=True)
    progress.enable(sys.stderr)
    with progress.phase("gen", 4):
        progress.advance(4)
    console.init_ray(num_cpus=2, include_dashboard=False)
    wg = RayWorkerGroup(Chatty, 2, name="actor_rollout_ref")
    wg.execute_all("chat")
    deadline = time.monotonic() + 30
    while sum("chatty-warning" in s for s in shown) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    for method in ("boom", "die"):
        try:
            wg.execute_all(method)
        except Exception as e:
            failure.report_failure(e, cfg)
    wg.shutdown()
    ray.shutdown()
    return 1


def _run_scenario(name: str, run_dir: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    r = subprocess.run([sys.executable, __file__, name, str(run_dir)], capture_output=True, text=True, timeout=240,
                       env=full_env, cwd=ROOT)
    log = (run_dir / "logs" / "train.log").read_text()
    return r, log


def test_worker_output_goes_to_the_log_and_failures_are_one_paragraph(tmp_path):
    r, log = _run_scenario("workers", tmp_path)
    console, out = r.stderr, r.stdout
    assert r.returncode == 1, console[-3000:]
    # the log file holds everything: prints of the workers and of the processes they spawn, INFO, harmless warnings
    for line in ("chatty-stdout", "child-stdout", "child-stderr", "chatty-info", "chatty-future", "driver-info",
                 "driver-future", "driver-print", "Started a local Ray instance"):
        assert line in log, line
        assert line not in console and line not in out, line
    # the console: warnings that matter (the driver's, and the workers' through Ray's stream), no harmless ones
    assert "driver-warning" in console
    assert "chatty-warning rank 0" in console and "chatty-warning rank 1" in console
    assert "FutureWarning" not in console
    # progress on a non-terminal: one line when the phase ends, no carriage return anywhere
    assert "  gen: 4/4 traj in" in console and "\r" not in console
    # a Python exception in a worker: who, what, where; the traceback in the log only
    raised = re.search(r"training failed: worker actor_rollout_ref rank 0 \(pid \d+\) raised ValueError: bad value 42 "
                       r"during boom at test_console\.py:\d+ in boom\.", console)
    assert raised, console
    assert "Traceback" not in console and "Traceback" in log and "bad value 42" in log
    # a SIGKILLed worker: who died, the memory keys, the checkpoint and how to resume; Ray's report in the log only
    assert re.search(r"training failed: worker actor_rollout_ref rank 1 \(pid \d+\) died during die without a Python "
                     r"error", console), console
    assert "The actor died unexpectedly" in log and "The actor died unexpectedly" not in console
    assert console.count(f"Last complete checkpoint: step 2 ({tmp_path / 'global_step_2'}); run the same command "
                         "again to resume from it (trainer.resume_mode=auto).") == 2
    assert "To lower memory: " in console and "actor_rollout_ref.model.enable_gradient_checkpointing=true" in console
    assert console.count(f"Full report and traceback: {tmp_path / 'logs' / 'train.log'}") == 2
    assert "HYDRA_FULL_ERROR" not in console


def _threshold_above_current_use(margin_bytes: int) -> str:
    info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()}
    used = info["MemTotal"] - info["MemAvailable"]
    return f"{(used + margin_bytes) / info['MemTotal']:.4f}"


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads the machine's memory from /proc/meminfo")
def test_a_kill_by_rays_memory_monitor_names_worker_memory_and_limit(tmp_path):
    env = {"RAY_memory_usage_threshold": _threshold_above_current_use(1 << 30),
           "RAY_memory_monitor_refresh_ms": "100"}
    r, log = _run_scenario("oom", tmp_path, env)
    console = r.stderr
    assert r.returncode == 1, console[-3000:]
    m = re.search(r"training failed: Ray's memory monitor killed worker actor_rollout_ref rank 0 \(pid \d+\) during "
                  r"(hog|__init__)\. The worker used ([\d.]+) GB; the machine was at ([\d.]+) GB of its ([\d.]+) GB, "
                  r"over Ray's kill threshold of ([\d.]+)% \(([\d.]+) GB\)\.", console)
    assert m, console
    used, total, threshold_gb = float(m.group(3)), float(m.group(4)), float(m.group(6))
    # Ray's report takes the machine's use after its decision (the monitor samples every 100 ms and the killed
    # worker's pages may already be going): seen 2.18 GB against a 2.22 GB threshold, so allow 10% under it
    assert 0 < 0.9 * threshold_gb <= used <= total
    assert f"No complete checkpoint in {tmp_path} yet" in console
    assert "To lower memory: " in console and "data.max_response_length (now 256)" in console
    assert "Top 10 memory users" in log and "Top 10 memory users" not in console  # Ray's raw report: the log only


def test_older_ray_memory_wording_is_parsed():
    from verl.utils.failure import parse_oom_message

    # Ray before 2.5x: "... where the task (..., memory used=...) was running was U / T (f), which exceeds ..."
    text = ("Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.1, ID: abc) where "
            "the task (actor ID: 1f, name=_WorkerHost.__init__, pid=4242, memory used=13.68GB) was running was "
            "22.40GB / 23.50GB (0.953191), which exceeds the memory usage threshold of 0.95. Ray killed this worker")
    o = parse_oom_message(text)
    assert (o.worker_gb, o.pid, o.node_used_gb, o.node_total_gb, o.threshold) == (13.68, 4242, 22.40, 23.50, 0.95)


def test_cli_failure_is_one_paragraph_with_no_hydra_hint(tmp_path, embedded_model_path):
    """`python -m verl.trainer.main_ppo` failing after start-up: exit 1, the paragraph, the traceback in the log."""
    model = tmp_path / "broken-model"  # passes the start-up check (a config.json), fails to load (no tokenizer)
    model.mkdir()
    (model / "config.json").write_text((Path(embedded_model_path) / "config.json").read_text())
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"trainer.default_local_dir={tmp_path}", "trainer.device=cpu",
           "trainer.n_gpus_per_node=1", f"actor_rollout_ref.model.path={model}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1, r.stderr[-3000:]
    assert "training failed: the driver raised " in r.stderr
    assert f"No complete checkpoint in {tmp_path} yet" in r.stderr
    assert "HYDRA_FULL_ERROR" not in r.stderr and "Traceback" not in r.stderr
    assert "Traceback" in (tmp_path / "logs" / "train.log").read_text()
    bad = subprocess.run([*cmd[:3], "trainer.log_level=LOUD"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "config error: trainer.log_level must be" in bad.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_driver_setup_quiet_and_verbose(tmp_path, verbose):
    code = ("import logging, sys, warnings\n"
            "from verl.utils import console\n"
            f"console.setup_run_logging(sys.argv[1], 'WARNING', verbose={verbose})\n"
            "logging.getLogger('x').info('info-line')\n"
            "warnings.warn('future-line', FutureWarning)\n"
            "print('print-line')\n"
            "print(console.worker_env())\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "train.log").read_text()
    assert "info-line" in log and "future-line" in log
    if verbose:  # everything on the console, as without the run log; workers keep their output
        assert "info-line" in r.stderr and "future-line" in r.stderr and "print-line" in r.stdout
        assert "{}" in r.stdout
    else:
        assert r.stdout == "" and r.stderr == ""
        assert "print-line" in log and f"'VERL_RUN_LOG': '{tmp_path / 'train.log'}'" in log


def test_progress_lines_without_a_terminal():
    from verl.utils.progress import Progress

    out = io.StringIO()
    p = Progress()
    p.enable(out)
    assert not p.live
    with p.phase("gen", 8):
        p.advance(3)
        p.advance(5)
    p.begin("update")
    p.end("update")
    with pytest.raises(RuntimeError), p.phase("val", 4):  # a failed phase prints nothing (the failure speaks)
        raise RuntimeError("x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert re.fullmatch(r"  gen: 8/8 traj in \d+\.\ds", lines[0]) and re.fullmatch(r"  update: \d+\.\ds", lines[1])


def test_progress_bars_with_eta_on_a_terminal():
    from verl.utils.progress import Progress

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 0-column pty draws nothing
    stream = os.fdopen(slave, "w")
    p = Progress()
    p.enable(stream)
    assert p.live
    with p.phase("gen", 4):
        p.advance(2)
        time.sleep(0.6)  # past tqdm's redraw interval
        p.advance(1)
    p._last_s["update"] = 3.0  # the previous step's update took 3 s
    with p.phase("update"):
        time.sleep(1.2)
    stream.flush()
    text = b""
    while select.select([master], [], [], 0.2)[0]:
        text += os.read(master, 65536)
    stream.close()
    os.close(master)
    shown = text.decode(errors="replace")
    assert "\r" in shown and re.search(r"gen: +\d+%\|.*\| 3/4 \[\d\d:\d\d<\d\d:\d\d", shown), shown
    assert "(last step 3s)" in shown


def test_console_filter_levels_and_flags():
    from verl.utils.console import FILE_ONLY, SHOW, ConsoleFilter

    f = ConsoleFilter(logging.WARNING)

    def rec(name, level, msg, extra=None):
        r = logging.LogRecord(name, level, __file__, 1, msg, None, None)
        r.__dict__.update(extra or {})
        return r

    assert f.filter(rec("verl.x", logging.WARNING, "matters"))
    assert not f.filter(rec("verl.x", logging.INFO, "chatter"))
    assert f.filter(rec("zerosearch.launch", logging.INFO, "server starting", SHOW))
    assert not f.filter(rec("verl.x", logging.ERROR, "raw report", FILE_ONLY))
    assert not f.filter(rec("vllm.triton_utils", logging.WARNING, "Triton is installed, but no CPU backend"))
    assert not f.filter(rec("py.warnings", logging.WARNING, "x.py:1: FutureWarning: soon"))
    assert ConsoleFilter(logging.WARNING, quiet=False).filter(rec("py.warnings", logging.WARNING, "FutureWarning"))


if __name__ == "__main__":
    sys.exit(_scenario(sys.argv[1], Path(sys.argv[2])))
