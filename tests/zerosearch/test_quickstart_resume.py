"""No lost work: SIGKILL of the quickstart during step 3, then the quickstart again, resumes from step 2.

The quickstart runs as a user runs it (`python -m zerosearch.quickstart KEY VALUE ...`, the launcher, the trainer
subprocess, Ray and its FSDP worker), shrunk to fit a test: 2 prompts x 2 samples, HF generation, BM25 search,
64-token responses, 4 validation questions, but still 4 steps with validation before and after. The whole process
group is killed with SIGKILL as soon as step 2 is checkpointed and logged; the second run must say that it
resumes from step 2, log steps 3 and 4 only (no second step-0 validation, no step 1 or 2 again), continue the
data order (new batch digests), and print the before/after table whose "before" is the first run's step 0.
The planning rules (resume, fresh start after a finished run, duplicate step lines, a line cut by a kill) are also
tested on their own on hand-made run directories.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from verl.utils import checkpoint as ckpt
from zerosearch.quickstart import ROOT, before_after, format_table, plan_run, read_val_rows

SMALL = ["ROLLOUT", "hf", "SEARCH_MODE", "local", "TRAIN_BATCH_SIZE", "2", "ROLLOUT_N", "2", "LOGGER", "console,jsonl",
         "MAX_TURNS", "1", "TOPK", "2", "data.val_max_samples=4", "data.max_response_length=64",
         "data.max_obs_length=32", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"]


def _start(world: Path, run: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zerosearch.quickstart", *SMALL, "DATA_PATH", str(world), "CHECKPOINT_DIR", str(run)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _records(run: Path, strict: bool = True) -> list[dict]:
    path = run / "logs" / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise
    return out


def _kill_group(proc: subprocess.Popen) -> list[str]:
    """SIGKILL the quickstart's process group and every descendant; the processes still alive 30 s later."""
    top = psutil.Process(proc.pid)
    family = [top, *top.children(recursive=True)]
    outside = [p.name() for p in family if os.getpgid(p.pid) != proc.pid]
    print(f"killing {len(family)} processes {sorted({p.name() for p in family})}; outside the group: {outside}")
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:  # in case one left the group (a new session)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=30)
    return [f"{p.pid} {p.name()}" for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _val(step: int, em: float) -> dict:
    return {"step": step, "val/overall/em": em, "val/overall/f1": em, "val/overall/count": 4}


def _write(run: Path, records: list[dict], checkpoints: list[int], tail: str = "") -> Path:
    metrics = run / "logs" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    for step in checkpoints:
        (ckpt.step_dir(run, step) / "actor").mkdir(parents=True)
        ckpt.mark_complete(run, step, {"global_step": step})
    return metrics


def test_table_takes_the_first_step0_and_the_last_final_validation():
    # a step logged but not checkpointed (time condition) is logged again when it is redone after a resume
    rows = [_val(0, 0.1), _val(2, 0.3), _val(0, 0.9), _val(4, 0.2), _val(4, 0.5)]
    before, after = before_after(rows)
    assert before["val/overall/em"] == 0.1 and after["val/overall/em"] == 0.5
    assert before_after([_val(0, 0.1)]) is None and before_after([]) is None


def test_plan_resumes_without_validating_again_and_mends_a_cut_line(tmp_path, capsys):
    run = tmp_path / "run"
    metrics = _write(run, [_val(0, 0.25), {"step": 1}, {"step": 2}], [1, 2], tail='{"step": 3, "actor/pg')
    assert plan_run(run, 4) == ["VAL_BEFORE_TRAIN", "false"]
    assert "quickstart: resuming from step 2 of 4" in capsys.readouterr().out
    assert metrics.read_text().endswith('"actor/pg\n')  # the next record starts on its own line
    assert [r["step"] for r in read_val_rows(metrics)] == [0]


def test_plan_fresh_cases(tmp_path, capsys):
    assert plan_run(tmp_path / "none", 4) == []  # nothing there
    killed_in_val = tmp_path / "killed_in_val"
    _write(killed_in_val, [], [])
    assert plan_run(killed_in_val, 4) == []  # no step-0 validation logged: validate first
    assert capsys.readouterr().out == ""
    # a finished run: moved aside (without its optimizer state), a fresh run starts
    done = tmp_path / "done"
    _write(done, [_val(0, 0.1), {"step": 1}, {"step": 2}, _val(2, 0.3)], [1, 2])
    assert plan_run(done, 2) == []
    assert "had finished; starting a fresh one" in capsys.readouterr().out
    old = tmp_path / "done.previous"
    assert not done.exists() and (old / "logs" / "metrics.jsonl").exists()
    assert (old / "global_step_2" / "trainer_state.json").exists() and not (old / "global_step_2" / "actor").exists()


@pytest.mark.slow
def test_sigkill_in_step_3_then_rerun_resumes_from_step_2(tmp_path):
    world, run = tmp_path / "world", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(world), "--entities", "1000",
                    "--train", "64", "--test", "8"], check=True)
    t0 = time.monotonic()
    first = _start(world, run, tmp_path / "first.log")
    pointer = run / "latest_checkpointed_iteration.txt"
    try:
        while not (pointer.exists() and pointer.read_text() == "2"
                   and any(r["step"] == 2 for r in _records(run, strict=False))):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 300, "step 2 was not checkpointed within 5 minutes"
            time.sleep(0.5)
    finally:
        leftovers = _kill_group(first) if first.poll() is None else []
    assert not leftovers, f"processes of the killed run still alive: {leftovers}"
    killed = _records(run)
    assert [r["step"] for r in killed] == [0, 1, 2]
    step0 = killed[0]
    assert any(k.startswith("val/") for k in step0)

    second = _start(world, run, tmp_path / "second.log")
    try:
        rc = second.wait(timeout=300)
    finally:
        if second.poll() is None:
            _kill_group(second)
    out = (tmp_path / "second.log").read_text()
    assert rc == 0, out[-3000:]
    assert "quickstart: resuming from step 2 of 4" in out
    records = _records(run)
    assert len(records) >= 3 and records[:3] == killed  # appended to, not truncated
    resumed = records[3:]
    assert [r["step"] for r in resumed] == [3, 4]  # no second step-0 validation, steps 1 and 2 not redone
    assert not any(k.startswith("val/") for k in resumed[0]) and any(k.startswith("val/") for k in resumed[1])
    digests = [r["data/batch_digest"] for r in records if "data/batch_digest" in r]
    assert len(digests) == 4 and len(set(digests)) == 4  # the data order continued (64 rows: no repeat)
    assert pointer.read_text() == "4" and (run / "global_step_4" / "huggingface" / "config.json").exists()
    assert format_table(step0, resumed[1]) in out  # "before" is the first run's step-0 validation
