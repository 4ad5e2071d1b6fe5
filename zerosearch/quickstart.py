"""`make quickstart`: the main job on a fresh machine, on the embedded defaults.

1. converts the embedded SmolLM2-135M-Instruct (once) and generates the embedded world;
2. trains it with GRPO on simulated search: the embedded model, served by vLLM's OpenAI server, plays
   the search engine, with the noise curriculum;
3. validates with real search (BM25 over the world's corpus) before and after training;
4. prints the EM / F1 / substring table before and after, per data source, and the checkpoint path.
Extra `KEY VALUE` arguments and `a.b=c` overrides are passed to the train script unchanged.

No lost work: a checkpoint is saved after every step (the launcher's CPU default), and running the quickstart
again after a failure resumes from the last complete step (`trainer.resume_mode=auto`) without validating again:
metrics.jsonl is only appended to, and the table's "before" is the first run's step-0 validation. When the
previous run had finished, a fresh run starts; the finished one's logs and models (not its optimizer state)
move to `<dir>.previous`.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from verl.trainer.ppo.metrics import DATASET_AVG
from verl.utils import checkpoint as ckpt
from verl.utils.tracking import read_jsonl
from zerosearch import launch

ROOT = Path(__file__).resolve().parents[1]
# Sized for a 2-core CPU and the 135M model (see README "Quickstart numbers"): one worker, 8 prompts x 4
# samples per step, sampling at temperature 0.7 (the model rambles at 1.0), a small reward for a well-formed
# answer so that groups where no sample is right still carry a signal, 64 validation questions, and no KL
# loss (beta 0, as TRL's default), which saves the reference forward pass. With bf16 compute (PRECISION auto)
# and no old-log-prob pass a step takes ~2 minutes; the whole job ~15 minutes.
QUICKSTART_ARGS = [
    "EXPERIMENT_NAME", "quickstart", "LOGGER", "console,jsonl,wandb", "TOTAL_STEPS", "4", "TRAIN_BATCH_SIZE", "8",
    "ROLLOUT_N", "4", "LR", "5e-6", "actor_rollout_ref.rollout.temperature=0.7", "reward.format_reward=0.2",
    "actor_rollout_ref.actor.use_kl_loss=false", "data.val_max_samples=64",
]


def read_val_rows(metrics_path: Path) -> list[dict]:
    """Validation records in log order; a line cut short by a kill is skipped."""
    return [rec for rec in read_jsonl(metrics_path) if any(k.startswith("val/") for k in rec)]


def before_after(rows: list[dict]) -> tuple[dict, dict] | None:
    """The earliest step's first validation (a resumed run logs step 0 once, in its first attempt) and the
    latest step's last one (a step logged but not checkpointed is logged again when it is redone)."""
    if not rows:
        return None
    first, last = min(r["step"] for r in rows), max(r["step"] for r in rows)
    if first == last:
        return None
    return next(r for r in rows if r["step"] == first), [r for r in rows if r["step"] == last][-1]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _end_last_line(path: Path) -> None:
    """Terminate a last line cut short by a kill, so that it cannot swallow the next record appended."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            f.write(b"\n")


def plan_run(root: Path, total: int) -> list[str]:
    """Extra launcher arguments that continue the run in `root`, or move a finished run aside for a fresh one."""
    metrics = root / "logs" / "metrics.jsonl"
    latest = ckpt.latest_step(root) if root.is_dir() else None
    rows = read_val_rows(metrics)
    done = latest is not None and latest >= total or (latest is None and any(r["step"] >= total for r in rows))
    if done:  # keep its logs and models one run longer, not its optimizer state (GBs)
        old = root.with_name(root.name + ".previous")
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
        for part in [*old.glob("global_step_*/actor"), *old.glob("global_step_*/critic")]:
            shutil.rmtree(part, ignore_errors=True)
        print(f"quickstart: the previous run in {_shown(root)} had finished; starting a fresh one (its logs and "
              f"models are now in {_shown(old)})", flush=True)
        return []
    _end_last_line(metrics)
    has_step0 = any(r["step"] == 0 for r in rows)
    if latest is None and not has_step0:
        return []
    where = f"step {latest} of {total} ({_shown(ckpt.step_dir(root, latest))})" if latest is not None else \
        f"step 0 of {total} (no checkpoint yet; the step-0 validation in {_shown(metrics)} is kept)"
    print(f"quickstart: resuming from {where}", flush=True)
    return ["VAL_BEFORE_TRAIN", "false"] if has_step0 else []


def _run_settings(parsed: launch.Launch) -> tuple[Path, int]:
    """(checkpoint root, total steps) exactly as the trainer will see them (overrides included)."""
    ov = dict(o.split("=", 1) for o in launch.build_overrides(parsed) if "=" in o)
    d = ov.get("trainer.default_local_dir")
    if d is None:  # the trainer's default, relative to ROOT
        d = f"checkpoints/{ov['trainer.project_name']}/{ov['trainer.experiment_name']}"
    return ROOT / d, int(ov["trainer.total_training_steps"])  # the trainer runs in ROOT


def format_table(before: dict, after: dict) -> str:
    """Per data source, then all rows (`overall`) and the mean over data sources (`dataset_avg`, the paper's Avg)."""
    found = {k.split("/")[1] for k in before if k.startswith("val/") and k.endswith("/em")}
    tail = [s for s in ("overall", DATASET_AVG) if s in found]
    sources = sorted(found - set(tail)) + tail
    lines = [f"{'data source':<16} {'n':>5} {'EM before':>10} {'EM after':>9} {'F1 before':>10} {'F1 after':>9}"]
    for s in sources:
        n = f"{int(before[f'val/{s}/count'])}" if f"val/{s}/count" in before else "-"
        cells = [before.get(f"val/{s}/em"), after.get(f"val/{s}/em"), before.get(f"val/{s}/f1"),
                 after.get(f"val/{s}/f1")]
        lines.append(f"{s:<16} {n:>5} " + " ".join(f"{c:>9.3f}" if c is not None else f"{'-':>9}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ["grpo", *QUICKSTART_ARGS, *argv]
    try:
        parsed = launch.parse_args("grpo", args[1:])
        root, total = _run_settings(parsed)
    except (launch.UsageError, ValueError):
        return launch.main(args)  # prints the error and the valid keys
    if launch.parse_bool(parsed.values["DRY_RUN"], "DRY_RUN"):  # `DRY_RUN 1` / `yes` too
        return launch.main(args)
    metrics = root / "logs" / "metrics.jsonl"
    rc = launch.main([*args, *plan_run(root, total)])
    if rc != 0:
        what = "stopped by a signal" if rc in (129, 130, 143) else "training failed"
        print(f"quickstart: {what} (exit {rc}); run it again to resume from the last complete step", file=sys.stderr)
        return rc
    pair = before_after(read_val_rows(metrics))
    if pair is None:
        print(f"quickstart: expected validation before and after training in {metrics}", file=sys.stderr)
        return 1
    print("\nZeroSearch quickstart: GRPO with simulated search, validated with real (BM25) search\n")
    print(format_table(*pair))
    pointer = root / "latest_checkpointed_iteration.txt"
    if pointer.exists():
        print(f"\ncheckpoint: {root / ('global_step_' + pointer.read_text().strip())}")
        print("load it with AutoModelForCausalLM.from_pretrained('<checkpoint>/huggingface')")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
