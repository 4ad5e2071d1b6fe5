"""W&B tracking across resumes (offline W&B, the real library): two sessions on one run dir continue one W&B run,
and no key, whether in the environment, the config or the command line, lands in any file written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verl.utils.tracking import RUN_ID_FILE, redact_argv, wandb_run_id

pytest.importorskip("wandb")
ROOT = Path(__file__).resolve().parents[3]
FAKE_WANDB_KEY = "fakewandbkey" + "7" * 28  # 40 characters, the shape of a real W&B key
FAKE_SERP_ENV, FAKE_SERP_CFG, FAKE_SERP_ARGV = "fakeserpenv1234", "fakeserpcfg5678", "fakeserpargv9012"
SESSION = textwrap.dedent("""
    import sys
    from verl.utils.tracking import Tracking
    log_dir, start = sys.argv[1], int(sys.argv[2])
    t = Tracking("proj", "exp", ["wandb", "jsonl"], {"search": {"serpapi_key": %r, "topk": 3}}, log_dir,
                 total_steps=4, start_step=start)
    for step in range(start + 1, start + 3):
        t.log({"critic/score/mean": 0.1 * step}, step=step)
    print("RUN_ID", t._wandb.id)
    t.finish()
""") % FAKE_SERP_CFG


def _session(log_dir: Path, start: int) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": FAKE_WANDB_KEY, "SER_API_KEY": FAKE_SERP_ENV,
           "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    env.pop("WANDB_RUN_ID", None)
    out = subprocess.run([sys.executable, "-c", SESSION, str(log_dir), str(start),
                          f"+search.serpapi_key={FAKE_SERP_ARGV}", "--api_key", FAKE_WANDB_KEY],
                         cwd=log_dir.parents[1], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("RUN_ID"))


def test_resumed_sessions_continue_one_wandb_run_and_write_no_key(tmp_path):
    log_dir = tmp_path / "ckpt" / "logs"
    first = _session(log_dir, 0)
    second = _session(log_dir, 2)  # the resume: same run dir, later steps
    assert first == second == (log_dir / RUN_ID_FILE).read_text().strip()
    runs = sorted(p.name for p in (log_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.endswith(f"-{first}") for r in runs)
    assert [r["step"] for r in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and any(p.name == "debug-internal.log" for p in written)
    for path in written:
        data = path.read_bytes()
        for fake in (FAKE_WANDB_KEY, FAKE_SERP_ENV, FAKE_SERP_CFG, FAKE_SERP_ARGV):
            assert fake.encode() not in data, f"{fake} written to {path.relative_to(tmp_path)}"


def test_run_id_file_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    run_id = wandb_run_id(tmp_path)
    assert wandb_run_id(tmp_path) == run_id and len(run_id) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_ID_FILE]  # no temporary file left behind
    monkeypatch.setenv("WANDB_RUN_ID", "chosen-by-user")
    assert wandb_run_id(tmp_path) == "chosen-by-user"
    monkeypatch.delenv("WANDB_RUN_ID")
    (tmp_path / RUN_ID_FILE).write_text("not an id!\n")
    with pytest.raises(ValueError, match=r"wandb_run_id holds 'not an id!', not a W&B run id.*delete the file"):
        wandb_run_id(tmp_path)


def test_redact_argv():
    argv = ["main.py", "+search.serpapi_key=sk1", "trainer.total_training_steps=3", "--api_key", "sk2",
            "--WANDB_API_KEY=sk3", "search.topk=3", "data.path=tokens.parquet"]
    assert redact_argv(argv) == ["main.py", "+search.serpapi_key=***", "trainer.total_training_steps=3",
                                 "--api_key", "***", "--WANDB_API_KEY=***", "search.topk=3",
                                 "data.path=tokens.parquet"]
