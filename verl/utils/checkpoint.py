"""Driver-side checkpoint bookkeeping: step directories, the atomic `latest` pointer, keep-last-K.

Layout (verl's): `<default_local_dir>/global_step_<k>/{actor,critic,huggingface,trainer_state.json}` and
`<default_local_dir>/latest_checkpointed_iteration.txt`. The pointer is written (temp file + rename)
only after every part of the step directory is complete, so a run killed mid-save resumes from the
previous complete checkpoint instead of a half-written one.

Cadence (`save_due`): every `trainer.save_freq` steps, or every `trainer.save_interval_minutes`, whichever is
rarer; the last step always saves. The launcher's CPU default saves every step, so a kill loses at most one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

POINTER = "latest_checkpointed_iteration.txt"
STEP_RE = re.compile(r"^global_step_(\d+)$")


def save_due(step: int, last: bool, save_freq: int, interval_minutes: float, seconds_since_save: float) -> bool:
    """Whether step `step` saves: every `save_freq`-th step and the last one (`save_freq` <= 0: never); with
    `interval_minutes` > 0 a save_freq step saves only when that long has passed since the previous save (or
    the start), so the cadence is whichever of the two is rarer. The last step always saves."""
    if save_freq <= 0 or not (step % save_freq == 0 or last):
        return False
    return last or seconds_since_save >= 60.0 * interval_minutes


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{step}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file, never a
    half-written one. The file gets the usual permissions (0o666 less the umask), not mkstemp's 0o600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_complete(root: str | Path, step: int, trainer_state: dict) -> None:
    d = step_dir(root, step)
    atomic_write_text(d / "trainer_state.json", json.dumps(trainer_state, indent=2))
    atomic_write_text(Path(root) / POINTER, str(step))


def latest_step(root: str | Path) -> int | None:
    p = Path(root) / POINTER
    if not p.exists():
        return None
    step = int(p.read_text().strip())
    if not (step_dir(root, step) / "trainer_state.json").exists():
        raise RuntimeError(f"{p} points at step {step} but {step_dir(root, step)} is incomplete")
    return step


def resolve_resume(root: str | Path, mode: str, path: str | None) -> Path | None:
    """Which step directory to resume from, per trainer.resume_mode (auto | disable | resume_path)."""
    if mode == "disable":
        return None
    if mode == "resume_path":
        if not path:
            raise ValueError("trainer.resume_mode=resume_path needs trainer.resume_from_path=<.../global_step_N>")
        d = Path(path)
        if not (d / "trainer_state.json").exists():
            raise FileNotFoundError(
                f"trainer.resume_from_path={path} is not a complete checkpoint (no trainer_state.json)")
        return d
    if mode != "auto":
        raise ValueError(f"trainer.resume_mode must be auto, disable or resume_path, got {mode!r}")
    step = latest_step(root)
    return None if step is None else step_dir(root, step)


def prune(root: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete step directories (and any incomplete older ones)."""
    if not keep or keep <= 0:
        return []
    root = Path(root)
    steps = sorted(int(m.group(1)) for p in root.iterdir() if (m := STEP_RE.match(p.name)))
    latest = latest_step(root)
    removed = []
    complete = [s for s in steps if (step_dir(root, s) / "trainer_state.json").exists()]
    for s in steps:
        if latest is not None and s > latest:
            continue  # a save in progress
        if s in complete[-keep:]:
            continue
        shutil.rmtree(step_dir(root, s), ignore_errors=True)
        removed.append(step_dir(root, s))
    return removed


def mend_metrics(tracker, checkpoint: str | Path | None, step: int) -> dict | None:
    """Make the run's `metrics.jsonl` hold each step up to `step` once, before a (resumed) session logs more.

    A killed session may have logged steps past its last complete checkpoint (they are redone now, so their
    records are cut off) or left a last line cut short (cut off). Without a checkpoint (`checkpoint` None: a fresh
    start) every record is of lost work and the file is emptied. The file is cut in place (the tracker appends to
    it). Returns the record of step `step` kept in the checkpoint's trainer_state.json when the file lacks it (the
    session saved the step and was killed before logging it: the caller logs it), else None."""
    path = Path(tracker.log_dir) / "metrics.jsonl" if tracker is not None else None
    if path is None:
        return None
    limit = step if checkpoint is not None else -1
    data = path.read_bytes() if path.exists() else b""
    keep, seen = 0, set()
    for line in data.splitlines(keepends=True):
        try:
            rec = json.loads(line)
            ok = line.endswith(b"\n") and isinstance(rec, dict) and int(rec.get("step", -1)) <= limit
        except (ValueError, TypeError):
            ok = False
        if not ok:
            break
        keep += len(line)
        seen.add(int(rec["step"]))
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    if checkpoint is None or step in seen or step == 0:
        return None
    state_file = Path(checkpoint) / "trainer_state.json"
    saved = json.loads(state_file.read_text()).get("metrics") if state_file.exists() else None
    return dict(saved) if saved else None
