"""Faults: SIGKILL of the trainer at four points and of one FSDP worker, each resumed with nothing lost.

One chain of launcher sessions on one run directory (2 prompts x 2 samples, HF generation, BM25 search, 3 steps,
validation before training and at the end, a checkpoint every step, W&B offline). Each session but the
last is stopped by `verl.utils.faults` (`ZEROSEARCH_FAULT=<point>[@<step>]`):

1. `update_actor@2` with `ZEROSEARCH_FAULT_TARGET=worker`: the FSDP worker alone SIGKILLed inside the actor update
   of step 2 (step 1 complete and logged); the driver must stop within 60 s with exit code 1 and one paragraph
   naming the worker and how to resume;
2. `update_actor`: the trainer SIGKILLed while its worker is inside the actor update (mid-step: the trainer's
   kill after a rollout takes the same way back, from the last complete checkpoint);
3. `save_checkpoint@2`: the trainer SIGKILLed mid-save (the sharded state of step 2 written, nothing else); then a
   line cut short is appended to metrics.jsonl, as a kill in the middle of a write leaves it;
4. `after_save@2`: the trainer SIGKILLed after step 2's checkpoint is complete, before its metrics are logged;
5. `validate@3`: the trainer SIGKILLed in the final validation (after the final checkpoint);
6. no fault: the run finishes (the final validation is done again, step 3 logged once).

After each kill: every process of the session (Ray's raylet, GCS, agents, workers) is gone within 15 s of the
launcher's exit; the `latest` pointer names a complete checkpoint and a partial step directory is never resumed
from; each resumed session says which step it resumes from. At the end: metrics.jsonl has steps 0..3 once each
(validation at 0 and 3), the batches of steps 1..3 are those the sampler gives an uninterrupted run with the same
seed (`data/batch_digest`), and every session wrote to the same offline W&B run (logs/wandb_run_id).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from verl.utils import checkpoint as ckpt
from verl.utils.dataset import BatchIterator
from verl.utils.tracking import Tracking

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH, SEED, TRAIN_ROWS = 3, 2, 1, 64
SMALL = ["ROLLOUT", "hf", "SEARCH_MODE", "local", "TRAIN_BATCH_SIZE", str(BATCH), "ROLLOUT_N", "2", "MAX_TURNS", "1",
         "TOPK", "2", "TOTAL_STEPS", str(STEPS), "SAVE_FREQ", "1", "TEST_FREQ", str(STEPS), "VAL_BEFORE_TRAIN", "true",
         "LOGGER", "console,jsonl,wandb", "data.val_max_samples=2", "data.max_response_length=64",
         "data.max_obs_length=32", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"]
REAP_BOUND_S = 15.0  # every process of a killed session gone this long after the launcher ended
WORKER_STOP_S = 60.0  # the driver stops this long after its worker died
RAY_REAP_S = 4.0  # a bare Ray cluster's processes gone this long after a SIGKILL of its driver (two reaper polls
# and two of its Ray grace periods, plus a second; before: the reaper's 5 s grace, which the agents sat out)


def _session(process_tree, world: Path, run: Path, log: Path, fault: str | None = None, target: str | None = None,
             timeout_s: float = 400, named_worker: bool = False, env: dict[str, str] | None = None,
             args: list[str] = ()) -> tuple[int, str, float, float | None]:
    """One launcher session (with `ZEROSEARCH_FAULT=fault`): its exit code, its output, the seconds until every process
    it started was gone after it ended (leftovers are killed and named), and the seconds from the FSDP worker's last
    sign of life to the launcher's end."""
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if not k.startswith(("VERL_REAPER_WATCHES", "ZEROSEARCH_FAULT"))}
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    if fault:
        env["ZEROSEARCH_FAULT"] = fault
    if target:
        env["ZEROSEARCH_FAULT_TARGET"] = target
    cmd = [sys.executable, "-m", "zerosearch.launch", "grpo", *SMALL, *args, "DATA_PATH", str(world), "CHECKPOINT_DIR",
           str(run)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    tree = process_tree(proc.pid)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    ended = time.monotonic()
    procs = tree.stop()
    last_alive = {pid: t for (pid, _), t in tree.last_alive.items()}
    worker = tree.died("_WorkerHost") or tree.died("actor_rollout_ref")
    if named_worker:  # the worker named in the failure paragraph
        pid = re.search(r"\(pid (\d+)\)", log.read_text(errors="replace"))
        worker = last_alive.get(int(pid.group(1)), worker) if pid else worker
    _, still = psutil.wait_procs(procs, timeout=REAP_BOUND_S + 5)
    reaped_s = time.monotonic() - ended
    left = process_tree.still_running(still)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"alive {reaped_s:.0f} s after the launcher ended: {left}"
    return rc, log.read_text(errors="replace"), reaped_s, None if worker is None else ended - worker


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in _records(run)]


def _pointer(run: Path) -> int | None:
    return ckpt.latest_step(run)


def _digest(idx: list[int]) -> float:
    return float(int(hashlib.md5(str(idx).encode()).hexdigest()[:12], 16))


def _expected_digests(n_rows: int) -> list[float]:
    """`data/batch_digest` of steps 1..STEPS of an uninterrupted run: the sampler with the run's seed."""
    it = BatchIterator(n_rows, BATCH, shuffle=True, seed=SEED)
    return [_digest(it.next()[0]) for _ in range(STEPS)]


def _killed(rc: int) -> bool:
    return rc in (-signal.SIGKILL, 128 + signal.SIGKILL, 256 - signal.SIGKILL, 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "world"
    subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(out), "--entities", "1000", "--train",
                    str(TRAIN_ROWS), "--test", "8"], check=True, cwd=ROOT, capture_output=True)
    return out


@pytest.mark.slow
def test_sigkill_at_four_points_and_a_worker_then_resume_loses_nothing(world, tmp_path, fake_keys, process_tree):
    """The chain above; its sessions carry fake SerpAPI and W&B keys (validation searches a fake SerpAPI on
    127.0.0.1), and at the end no file any session wrote holds a key (see test_secrets.py)."""
    run, cache = tmp_path / "run", tmp_path / "search_cache.sqlite"
    # every trajectory opens with a search, so validation is sure to call the fake SerpAPI with the key
    key_args = [*fake_keys.ARGS, f"+search.cache_path={cache}", "trainer.log_train_generations=4",
                "data.assistant_prefix='<search>'"]
    t0 = time.time()
    times: dict[str, float] = {}
    reaped: dict[str, float] = {}
    stops: dict[str, float | None] = {}

    def session(name: str, fault: str | None, target: str | None = None) -> tuple[int, str]:
        t0 = time.monotonic()
        rc, out, reaped[name], stops[name] = _session(
            process_tree, world, run, tmp_path / f"{name}.log", fault, target, named_worker=target is not None,
            env=fake_keys.env(), args=key_args)
        times[name] = time.monotonic() - t0
        assert reaped[name] <= REAP_BOUND_S, f"{name}: the session's processes took {reaped[name]:.1f} s to go"
        return rc, out

    # 1. the FSDP worker killed inside the update of step 2: the driver stops with a clear paragraph and exit code 1
    rc, out = session("worker", "update_actor@2", target="worker")
    assert rc == 1, out[-3000:]
    para = out[out.index("training failed:"):]
    assert re.search(r"worker actor_rollout_ref rank 0 \(pid \d+\) died during update_actor", para), para
    assert "SIGKILL" in para and "Last complete checkpoint: step 1" in para and "resume" in para, para
    assert "Traceback" not in out, out[-3000:]
    assert stops["worker"] is not None and stops["worker"] <= WORKER_STOP_S, stops
    assert _pointer(run) == 1 and _steps(run) == [0, 1]
    run_id = (run / "logs" / "wandb_run_id").read_text().strip()

    # 2. the trainer killed while its worker is inside the update
    rc, out = session("update", "update_actor")
    assert _killed(rc) and _pointer(run) == 1 and _steps(run) == [0, 1], out[-3000:]

    # 3. mid-save of step 2: a partial step directory, the pointer still at step 1
    rc, out = session("save", "save_checkpoint@2")
    assert _killed(rc) and _pointer(run) == 1, out[-3000:]
    partial = ckpt.step_dir(run, 2)
    assert (partial / "actor" / "dcp").is_dir() and not (partial / "trainer_state.json").exists()
    assert not (partial / "huggingface").exists()
    with open(run / "logs" / "metrics.jsonl", "a") as f:  # a write cut by a kill
        f.write('{"step": 2, "actor/pg')

    # 4. after step 2's checkpoint is complete, before its metrics are logged
    rc, out = session("after_save", "after_save@2")
    assert _killed(rc) and _pointer(run) == 2, out[-3000:]
    assert "resumed from" in (run / "logs" / "train.log").read_text()
    assert _steps(run) == [0, 1]  # the cut line is gone; step 2 was saved but not logged

    # 5. in the final validation (step 3 trained and saved: the trainer saves before it validates)
    rc, out = session("final_val", "validate@3")
    assert _killed(rc) and _pointer(run) == STEPS, out[-3000:]
    assert (ckpt.step_dir(run, STEPS) / "trainer_state.json").exists()  # nothing of the training lost
    assert _steps(run) == [0, 1, 2]  # step 2's record came from its checkpoint

    # 6. to the end
    rc, out = session("finish", None)
    assert rc == 0, out[-3000:]
    assert _pointer(run) == STEPS and (ckpt.step_dir(run, STEPS) / "huggingface" / "config.json").exists()
    records = _records(run)
    assert [r["step"] for r in records] == [0, 1, 2, 3]  # each step once, none missing
    assert [r["step"] for r in records if any(k.startswith("val/") for k in r)] == [0, 3]
    assert [r["data/batch_digest"] for r in records[1:]] == _expected_digests(TRAIN_ROWS)
    log = (run / "logs" / "train.log").read_text()
    assert log.count("resumed from") >= 3
    # one W&B run: every session reused the id, each offline session dir carries it
    assert (run / "logs" / "wandb_run_id").read_text().strip() == run_id
    offline = sorted((run / "logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 6 and all(d.name.endswith(f"-{run_id}") for d in offline), offline
    print(f"session seconds: {times}; reaped after: {reaped}; worker death to launcher exit: {stops}")

    # the keys were in play: validation called SerpAPI with the configured key, W&B wrote its files; none leaked
    sent = {r.get("api_key") for r in fake_keys.serp.requests}
    assert fake_keys.serp.requests and sent == {fake_keys.SERP_CFG}, sent
    written = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"train.log", "metrics.jsonl", "config.json", "train_generations.jsonl"} <= names, sorted(names)
    assert any(p.suffix == ".wandb" for p in written) and any(p.suffix == ".safetensors" for p in written)
    assert cache.exists()
    sessions = fake_keys.ray_sessions_since(t0)
    assert sessions, "no Ray session dir under /tmp/ray from this run"
    n, leaks = fake_keys.scan([tmp_path, *sessions])
    print(f"secret scan: {n} files ({len(written)} in the run dir, {len(sessions)} Ray session dir(s))")
    assert not leaks, leaks[:10]
    assert n > len(written)


def test_fault_point_kills_only_at_its_name_and_step(tmp_path):
    code = ("from verl.utils.faults import fault_point\n"
            "for step in (1, 2, 3):\n"
            "    fault_point('rollout', step); fault_point('validate', step); print(step, flush=True)\n")

    def run(spec: str | None) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROSEARCH_FAULT")}
        if spec:
            env["ZEROSEARCH_FAULT"] = spec
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        return p.returncode, p.stdout.split()

    assert run(None) == (0, ["1", "2", "3"])
    assert run("validate@2") == (-signal.SIGKILL, ["1"])
    assert run("rollout") == (-signal.SIGKILL, [])
    assert run("update_actor@2") == (0, ["1", "2", "3"])


def test_mend_metrics_cuts_redone_steps_and_a_cut_line_and_returns_a_saved_unlogged_step(tmp_path):
    tracker = Tracking("p", "e", ["jsonl"], {}, str(tmp_path / "logs"), 4)
    for step in range(4):
        tracker.log({"x": float(step)}, step)
    path = tmp_path / "logs" / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 4, "x')  # cut by a kill
    ckpt.mark_complete(tmp_path, 2, {"global_step": 2, "metrics": {"x": 2.0}})
    assert ckpt.mend_metrics(tracker, ckpt.step_dir(tmp_path, 2), 2) is None  # step 2 is logged
    tracker.log({"x": 3.5}, 3)  # the tracker still appends to the same file
    assert [json.loads(s) for s in path.read_text().splitlines()] == [
        {"step": 0, "x": 0.0}, {"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}, {"step": 3, "x": 3.5}]
    # step 3 saved, killed before it was logged: its record comes back from the checkpoint
    ckpt.mark_complete(tmp_path, 3, {"global_step": 3, "metrics": {"x": 3.0}})
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    assert ckpt.mend_metrics(tracker, ckpt.step_dir(tmp_path, 3), 3) == {"x": 3.0}
    # no checkpoint: a fresh start, the killed session's records are all of lost work
    assert ckpt.mend_metrics(tracker, None, 0) is None
    assert path.read_text() == ""
    tracker.finish()


RAY_DRIVER = """
import os, sys, time
import ray
from verl.utils import reaper
reaper.guard()
ray.init(address="local", include_dashboard=False, num_cpus=1)

@ray.remote
class Worker:
    def pid(self):
        return os.getpid()

w = Worker.remote()
print("READY", ray.get(w.pid.remote()), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_ray_daemons_and_workers_gone_soon_after_a_sigkill_of_the_driver(tmp_path, process_tree):
    """A driver that started a local Ray cluster is SIGKILLed: the raylet and GCS die with it, and the reaper stops
    the agents and workers (the dashboard and runtime-env agents alone would linger about a minute)."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_REAPER_WATCHES"}
    proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert "READY" in proc.stdout.readline()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the agents start a few seconds after ray.init returns
            family = psutil.Process(proc.pid).children(recursive=True)
            if sum("Agent" in " ".join(p.cmdline()) for p in family) >= 2:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # recorded by the reaper
        family = [p for p in psutil.Process(proc.pid).children(recursive=True) if "verl.utils.reaper" not in
                  " ".join(p.cmdline())]
        names = [" ".join(p.cmdline()) for p in family]
        assert any("raylet" in n for n in names) and any(n.startswith("ray::") for n in names), names
    except BaseException:
        proc.kill()
        raise
    t0 = time.monotonic()
    proc.kill()
    proc.wait()
    bound = RAY_REAP_S
    _, alive = psutil.wait_procs(family, timeout=bound + 60)
    took = time.monotonic() - t0
    left = process_tree.still_running(alive)
    for p in alive:
        p.kill()
    assert not left and took <= bound, f"{took:.1f} s after the SIGKILL: {left}"


GUARDED = """
import subprocess, sys, time
from verl.utils import reaper
reaper.guard()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("ready", child.pid, flush=True)
time.sleep(600)
"""


def test_a_command_started_by_a_guarded_process_gets_a_reaper_of_its_own(tmp_path):
    """`VERL_REAPER_WATCHES` names this test process (as after an in-process `guard()`, a notebook's or a test's),
    whose reaper acts only when it ends: a SIGKILLed command under it must still have its leftovers stopped."""
    env = {**os.environ, "VERL_REAPER_WATCHES": str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-c", GUARDED], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(proc.stdout.readline().split()[1]))
    time.sleep(1.5)  # recorded by a reaper, if one runs
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs([child], timeout=10)
    for p in alive:
        p.kill()
    assert not alive, "the command's child outlived it: no reaper watched the command"
