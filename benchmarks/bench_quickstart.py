"""`make quickstart` end to end: wall time and peak total memory of all its processes, optionally killed and resumed.

Runs `make quickstart ARGS="..."` in its own session and samples, every `--interval` seconds, the summed PSS
(proportional set size: shared pages counted once across processes) of the whole process tree: make, the launcher,
the simulation server and its engine processes, the trainer driver, Ray's daemons, the FSDP worker and its vLLM
engine. Reports the wall time, the peak summed PSS and the peak per process kind.

`--kill-at-step N`: once checkpoint N-1 is complete and step N has started, SIGKILL the whole process tree (the
way an out-of-memory killer or a lost node ends a run), then run `make quickstart` again and check that it resumes
from step N-1 and prints the before/after table.

    .venv/bin/python benchmarks/bench_quickstart.py --args "PRECISION fp32"
    .venv/bin/python benchmarks/bench_quickstart.py --args "PRECISION fp32" --kill-at-step 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from results_io import append_record

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "checkpoints" / "zerosearch" / "quickstart"
GIB = 1 << 30


def kind(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    for key, name in (("api_server", "simulation server"), ("EngineCore", "vllm engine"), ("ray::", "ray worker"),
                      ("raylet", "ray daemons"), ("gcs_server", "ray daemons"), ("dashboard", "ray daemons"),
                      ("log_monitor", "ray daemons"), ("main_ppo", "trainer driver"), ("zerosearch.quickstart",
                                                                                       "launcher")):
        if key in cmd:
            return name
    return p.name()


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def sample(root: psutil.Process) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in tree(root):
        try:
            pss = p.memory_full_info().pss / GIB
        except psutil.Error:
            continue
        k = kind(p)
        out[k] = out.get(k, 0.0) + pss
    return out


def run_once(args: str, interval: float, kill_at_step: int = 0) -> dict:
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    start = time.time()
    proc = subprocess.Popen(["make", "quickstart", f"ARGS={args}"], cwd=ROOT, stdout=out_f, stderr=err_f, text=True,
                            start_new_session=True)
    root = psutil.Process(proc.pid)
    peak_total, peak_kinds, killed, seen = 0.0, {}, False, set()
    pointer = RUN_DIR / "latest_checkpointed_iteration.txt"
    while proc.poll() is None:
        s = sample(root)
        seen.update(p.pid for p in tree(root))
        total = sum(s.values())
        if total > peak_total:
            peak_total, peak_kinds = total, s
        if kill_at_step and pointer.exists() and pointer.read_text().strip() == str(kill_at_step - 1):
            time.sleep(20)  # well inside step N
            for pid in seen:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
            break
        time.sleep(interval)
    proc.wait()
    wall = time.time() - start
    out_f.seek(0)
    err_f.seek(0)
    err = err_f.read()
    return {"wall_s": wall, "rc": proc.returncode, "killed_at_step": kill_at_step if killed else None,
            "peak_total_pss_gib": peak_total, "peak_by_kind_gib": peak_kinds, "stdout": out_f.read(),
            "stderr_lines": len(err.splitlines()), "stderr_tail": err[-3000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--args", default="", help='KEY VALUE pairs passed as make quickstart ARGS="..."')
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--kill-at-step", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_quickstart.jsonl"))
    a = ap.parse_args()
    runs = [run_once(a.args, a.interval, a.kill_at_step)]
    if a.kill_at_step:
        time.sleep(5)
        runs.append(run_once(a.args, a.interval))
        resumed = f"resuming from step {a.kill_at_step - 1}" in runs[-1]["stdout"]
        print(f"resumed from step {a.kill_at_step - 1}: {resumed}")
    for r in runs:
        print(r["stdout"])
        print(r["stderr_tail"])
        print(json.dumps({k: v for k, v in r.items() if k not in ("stdout", "stderr_tail")}))
    append_record(a.out, {"bench": "quickstart", "args": a.args, "kill_at_step": a.kill_at_step,
                          "time": time.strftime("%Y-%m-%d %H:%M"), "runs": runs})


if __name__ == "__main__":
    main()
