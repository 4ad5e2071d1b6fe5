"""`make quickstart`: the main job on a fresh machine, on the embedded defaults.

1. converts the embedded SmolLM2-135M-Instruct (once) and generates the embedded world;
2. trains it with GRPO on simulated search: the embedded model, served by vLLM's OpenAI server, plays
   the search engine, with the noise curriculum;
3. validates with real search (BM25 over the world's corpus) before and after training;
4. prints the EM / F1 / substring table before and after, per data source, and the checkpoint path.
Extra `KEY VALUE` arguments and `a.b=c` overrides are passed to the train script unchanged.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

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
    "actor_rollout_ref.actor.use_kl_loss=false", "data.val_max_samples=64", "trainer.resume_mode=disable",
]


def read_val_rows(metrics_path: Path) -> list[dict]:
    rows = []
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            rec = json.loads(line)
            if any(k.startswith("val/") for k in rec):
                rows.append(rec)
    return rows


def format_table(before: dict, after: dict) -> str:
    sources = sorted({k.split("/")[1] for k in before if k.startswith("val/") and k.endswith("/em")})
    lines = [f"{'data source':<16} {'n':>5} {'EM before':>10} {'EM after':>9} {'F1 before':>10} {'F1 after':>9}"]
    for s in sources:
        n = int(before.get(f"val/{s}/count", 0))
        cells = [before.get(f"val/{s}/em"), after.get(f"val/{s}/em"), before.get(f"val/{s}/f1"),
                 after.get(f"val/{s}/f1")]
        lines.append(f"{s:<16} {n:>5} " + " ".join(f"{c:>9.3f}" if c is not None else f"{'-':>9}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ["grpo", *QUICKSTART_ARGS, *argv]
    parsed = launch.parse_args("grpo", args[1:])
    project, name = parsed.values["WANDB_PROJECT"], parsed.values["EXPERIMENT_NAME"]
    ckpt_dir = parsed.values["CHECKPOINT_DIR"]
    root = Path(ckpt_dir) if ckpt_dir != "auto" else ROOT / "checkpoints" / project / name
    metrics = root / "logs" / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()  # this run's table only
    rc = launch.main(args)
    if rc != 0:
        print(f"quickstart: training failed (exit {rc})", file=sys.stderr)
        return rc
    rows = read_val_rows(metrics)
    if len(rows) < 2:
        print(f"quickstart: expected validation before and after training in {metrics}", file=sys.stderr)
        return 1
    print("\nZeroSearch quickstart: GRPO with simulated search, validated with real (BM25) search\n")
    print(format_table(rows[0], rows[-1]))
    pointer = root / "latest_checkpointed_iteration.txt"
    if pointer.exists():
        print(f"\ncheckpoint: {root / ('global_step_' + pointer.read_text().strip())}")
        print("load it with AutoModelForCausalLM.from_pretrained('<checkpoint>/huggingface')")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
