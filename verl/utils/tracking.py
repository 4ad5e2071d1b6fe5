"""Experiment tracking: console (one line per step + a progress bar), JSONL file, and W&B.

The console backend writes to stderr: a step bar with the run's ETA and one metrics line per step (written through
tqdm, so live bars are redrawn below it; on a non-terminal the bar is off and only the lines are written), and it
turns on the per-phase bars of `verl.utils.progress` for its lifetime.

W&B runs offline when no API key is configured, so a laptop or CI run still produces a run directory
that `wandb sync` can upload later. A resumed run continues the same W&B run, as verl's does: the run id is kept in
`<log_dir>/wandb_run_id` (written by the first session; `WANDB_RUN_ID` in the environment takes precedence) and
passed to `wandb.init(id=..., resume="allow")`. Secrets never reach a logger: the config is redacted first
(`verl.utils.redact`: any key that looks like a key/token/secret/password is replaced), and so is the command line
W&B records in its run metadata (`+search.serpapi_key=...` there would otherwise be written into the run files).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import string
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from verl.utils import progress
from verl.utils.console import console_write
from verl.utils.redact import SECRET_MARKERS, _secret_name, redact, redact_argv  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

KNOWN_BACKENDS = ("console", "jsonl", "wandb")
RUN_ID_FILE = "wandb_run_id"
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file in order ([] when it does not exist); a line cut short by a kill is skipped."""
    out = []
    path = Path(path)
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


@contextmanager
def _redacted_argv():
    """`sys.argv` redacted while W&B reads it (its run metadata records the command line)."""
    saved = sys.argv
    sys.argv = redact_argv(list(saved))
    try:
        yield
    finally:
        sys.argv = saved


def wandb_run_id(log_dir: str | Path) -> str:
    """The W&B run id of the run in `log_dir`: `WANDB_RUN_ID` if set, else the one kept in `<log_dir>/wandb_run_id`,
    else a new one, written there (atomically) so that a resumed session continues the same W&B run."""
    env = os.environ.get("WANDB_RUN_ID")
    if env:
        return env
    path = Path(log_dir) / RUN_ID_FILE
    if path.exists():
        run_id = path.read_text(encoding="utf-8").strip()
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"{path} holds {run_id[:80]!r}, not a W&B run id (letters, digits, - and _): "
                             f"delete the file to start a new W&B run, or write the id of the run to continue")
        return run_id
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    tmp = path.with_name(RUN_ID_FILE + ".tmp")
    tmp.write_text(run_id + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return run_id


def _fmt(v: float) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


CONSOLE_KEYS = (
    "critic/score/mean",
    "val/overall/em",
    "actor/pg_loss",
    "actor/kl_loss",
    "actor/entropy",
    "actor/grad_norm",
    "response_length/mean",
    "env/ratio_of_valid_action",
    "env/number_of_valid_search",
    "search/noise_p",
    "timing_s/step",
)


class Tracking:
    def __init__(
        self,
        project: str,
        experiment: str,
        backends: list[str],
        config: dict,
        log_dir: str,
        total_steps: int,
        start_step: int = 0,
    ):
        unknown = [b for b in backends if b not in KNOWN_BACKENDS]
        if unknown:
            raise ValueError(f"trainer.logger has unknown backend(s) {unknown}; valid: {list(KNOWN_BACKENDS)}")
        self.backends = backends
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe_config = redact(config)
        (self.log_dir / "config.json").write_text(json.dumps(safe_config, indent=2, default=str))
        self._jsonl = open(self.log_dir / "metrics.jsonl", "a") if "jsonl" in backends else None
        self._bar = None
        if "console" in backends:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=experiment, unit="step", file=sys.stderr,
                             dynamic_ncols=True, disable=None, position=0)
            progress.enable(sys.stderr)
        self._wandb = None
        if "wandb" in backends:
            import wandb

            if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
                os.environ["WANDB_MODE"] = "offline"
                logger.info("no WANDB_API_KEY: wandb runs offline in %s", self.log_dir)
            run_id = wandb_run_id(self.log_dir)
            with _redacted_argv():
                self._wandb = wandb.init(project=project, name=experiment, config=safe_config, dir=str(self.log_dir),
                                         id=run_id, resume="allow")
            logger.info("W&B run %s (kept in %s for resumes)", run_id, self.log_dir / RUN_ID_FILE)
        self._t0 = time.time()

    def log(self, data: dict[str, float], step: int) -> None:
        clean = {k: (float(v) if hasattr(v, "__float__") else v) for k, v in data.items()}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **clean}, default=str) + "\n")
            self._jsonl.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        if "console" in self.backends:
            parts = [f"{k.split('/', 1)[-1] if k.startswith('critic/') else k}={_fmt(clean[k])}"
                     for k in CONSOLE_KEYS if k in clean]
            line = f"step {step}: " + " ".join(parts)
            console_write(line, sys.stderr)
            if self._bar is not None:
                self._bar.n = step
                self._bar.refresh()

    def log_table(self, name: str, records: list[dict], step: int) -> None:
        """Sample trajectories: a JSONL file always, a W&B table when W&B is on."""
        if not records:
            return
        path = self.log_dir / f"{name.replace('/', '_')}.jsonl"
        with open(path, "a") as f:
            for r in records:
                f.write(json.dumps({"step": step, **r}, default=str) + "\n")
        if self._wandb is not None:
            import wandb

            cols = sorted({k for r in records for k in r})
            table = wandb.Table(columns=["step", *cols])
            for r in records:
                table.add_data(step, *[str(r.get(c, "")) for c in cols])
            self._wandb.log({name: table}, step=step)

    def finish(self) -> None:
        if self._bar is not None:
            progress.disable()
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
