"""Learning benchmark, the paper's comparison in miniature: EM on the embedded world's test split, always validated
with real (BM25) search, for
- `base`: the embedded policy before training (`trainer.val_only=true`);
- `simulate_prompt`: after N GRPO steps whose searches are answered by the simulation LLM (the embedded model behind
  vLLM's OpenAI server, started for the run by the train-script launcher when nothing answers at IP:PORT);
- `local`: after the same N GRPO steps with real BM25 search during training;
- `simulate_sft`: the same N steps with a fine-tuned simulator (`--simulator DIR`, default
  checkpoints/simulator, built by `bash scripts/train_simulator.sh`: BM25 documents of the train questions labelled
  useful/noisy, SFT of the embedded model), served for the run like the prompted one.

Every arm runs the quickstart's settings (`zerosearch.quickstart.QUICKSTART_ARGS`: 8 prompts x 4 samples,
temperature 0.7, format reward 0.2, lr 5e-6, no KL loss, 64 validation questions, bf16 where the CPU has it) through
the train scripts' path (`zerosearch.launch`: parse_args -> build_overrides -> the trainer subprocess), so the
trained arms differ only in SEARCH_MODE (and SIMULATION_LLM); TOTAL_STEPS / TEST_FREQ are set here and the same for
all. Each invocation runs one arm and appends one JSON line (settings, the resolved Hydra overrides, machine, wall
time, the train curve: reward / EM / F1 / step time per step, the validation curve: EM / F1 per data source at every
validation) to benchmarks/results/bench_learning.jsonl; `--report` draws the curves from the latest record per arm.

Full run (about an hour in all on a 2-core box with N=8, see bench_learning.md):
    timeout 900  .venv/bin/python benchmarks/bench_learning.py --arm base
    timeout 3000 .venv/bin/python benchmarks/bench_learning.py --arm simulate_prompt --steps 8
    timeout 3000 .venv/bin/python benchmarks/bench_learning.py --arm local --steps 8
    bash scripts/train_simulator.sh      # once: the SFT simulator in checkpoints/simulator
    timeout 3000 .venv/bin/python benchmarks/bench_learning.py --arm simulate_sft --steps 8
    .venv/bin/python benchmarks/bench_learning.py --report
Smoke run that proved the pipeline (tiny: N=1, 2 prompts x 2 samples, 8 validation questions):
    timeout 1200 .venv/bin/python benchmarks/bench_learning.py --arm ARM --steps 1 --smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from zerosearch import launch
from zerosearch.quickstart import QUICKSTART_ARGS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_learning.jsonl"
PLOTS = ROOT / "benchmarks" / "plots"
COLORS = {"simulate_prompt": "C1", "local": "C0", "simulate_sft": "C3"}
ARMS = {"base": "local", "simulate_prompt": "simulate_prompt", "simulate_sft": "simulate_sft",
        "local": "local"}  # arm -> SEARCH_MODE
SIMULATOR = ROOT / "checkpoints" / "simulator"
SMOKE_ARGS = ["TRAIN_BATCH_SIZE", "2", "ROLLOUT_N", "2", "data.val_max_samples=8",
              "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"]
TRAIN_KEYS = ("critic/score/mean", "reward/em", "reward/f1", "reward/has_answer", "reward/format_ok",
              "env/number_of_valid_search", "search/latency_s", "timing_s/step", "timing_s/gen",
              "timing_s/update_actor", "response_length/mean")


def arm_args(arm: str, steps: int, test_freq: int, smoke: bool, tag: str, extra: list[str],
             simulator: Path = SIMULATOR) -> list[str]:
    """KEY VALUE / a.b=c arguments of the train script for this arm (later values win)."""
    if arm not in ARMS:
        raise ValueError(f"--arm must be one of {', '.join(ARMS)}, got {arm!r}")
    name = f"bench_learning_{arm}" + (f"_{tag}" if tag else "")
    args = [*QUICKSTART_ARGS, "SEARCH_MODE", ARMS[arm], "EXPERIMENT_NAME", name, "LOGGER", "console,jsonl",
            "CHECKPOINT_DIR", str(ROOT / "checkpoints" / "bench_learning" / name), "SAVE_FREQ", "-1",
            "VAL_BEFORE_TRAIN", "true", "trainer.resume_mode=disable"]  # every arm from the base model
    if arm == "base":
        args += ["TOTAL_STEPS", "1", "trainer.val_only=true"]
    else:
        args += ["TOTAL_STEPS", str(steps), "TEST_FREQ", str(test_freq if test_freq > 0 else steps)]
    if arm == "simulate_sft":
        if not (Path(simulator) / "config.json").is_file():
            raise SystemExit(f"bench_learning: no fine-tuned simulator at {simulator}; build it with `bash "
                             "scripts/train_simulator.sh` (or pass --simulator DIR)")
        args += ["SIMULATION_LLM", str(simulator)]
    return args + (SMOKE_ARGS if smoke else []) + list(extra)


def read_curves(metrics: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, validation rows) from a run's metrics.jsonl."""
    train, val = [], []
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        v = {k: rec[k] for k in rec if k.startswith("val/") and k.endswith(("/em", "/f1", "/count", "/has_answer"))}
        if v:
            val.append({"step": rec["step"], **v})
        t = {k: rec[k] for k in TRAIN_KEYS if k in rec}
        if t:
            train.append({"step": rec["step"], **t})
    return train, val


def run_arm(arm: str, steps: int, test_freq: int, smoke: bool, tag: str, extra: list[str], out: Path,
            simulator: Path = SIMULATOR) -> dict:
    args = arm_args(arm, steps, test_freq, smoke, tag, extra, simulator)
    parsed = launch.parse_args("grpo", args)
    overrides = launch.build_overrides(parsed)
    metrics = Path(parsed.values["CHECKPOINT_DIR"]) / "logs" / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()  # this run's curves only
    t0 = time.monotonic()
    rc = launch.main(["grpo", *args])
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"bench_learning: arm {arm} failed (exit {rc}); see the trainer output above")
    train, val = read_curves(metrics)
    if not val:
        raise SystemExit(f"bench_learning: no validation rows in {metrics}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scaling import machine
    from results_io import append_record

    rec = {"bench": "bench_learning", "arm": arm, "search_mode": ARMS[arm], "smoke": smoke, "tag": tag,
           "steps": 0 if arm == "base" else steps, "machine": machine(), "wall_s": round(wall, 1), "args": args,
           "overrides": overrides, "final_val_em": val[-1].get("val/overall/em"),
           "first_val_em": val[0].get("val/overall/em"), "train": train, "val": val}
    return append_record(out, rec)


# ---------------------------------------------------------------------------------------------- report
def latest(path: Path) -> dict[str, dict]:
    """Latest record per arm, preferring full runs over smoke runs."""
    best: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("bench") == "bench_learning" and (r["arm"] not in best or best[r["arm"]]["smoke"] or not r["smoke"]):
            best[r["arm"]] = r
    return best


def report(path: Path, plots: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_io import pyplot

    plt = pyplot("bench_learning")

    recs = latest(path)
    lines = ["| arm | search during training | steps | smoke | EM before | EM after | F1 after | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in recs.items():
        f1 = r["val"][-1].get("val/overall/f1")
        lines.append(f"| {arm} | {r['search_mode'] if arm != 'base' else '-'} | {r['steps']} | {r['smoke']} | "
                     f"{r['first_val_em']:.3f} | {r['final_val_em']:.3f} | {f1 if f1 is None else round(f1, 3)} | "
                     f"{r['wall_s']:.0f} |")
    if plt is None:
        return "\n".join(lines)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, r in recs.items():
        label, color = arm + (" (smoke)" if r["smoke"] else ""), COLORS.get(arm, "C2")
        if arm == "base":
            bx.axhline(r["final_val_em"], color="grey", ls="--", label=label)
            continue
        ax.plot([t["step"] for t in r["train"]], [t.get("critic/score/mean") for t in r["train"]], marker="o",
                color=color, label=f"{label}: reward")
        ax.plot([t["step"] for t in r["train"]], [t.get("reward/em") for t in r["train"]], marker="x", ls=":",
                color=color, label=f"{label}: train EM")
        bx.plot([v["step"] for v in r["val"]], [v.get("val/overall/em") for v in r["val"]], marker="o", color=color,
                label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean over the step's rollouts")
    ax.set_title("training reward (search as trained with)")
    ax.legend(fontsize=8)
    bx.set_xlabel("GRPO step")
    bx.set_ylabel("EM, test split (BM25 search, greedy)")
    bx.set_title("validation EM")
    bx.legend(fontsize=8)
    fig.tight_layout()
    plots.mkdir(parents=True, exist_ok=True)
    dest = plots / "bench_learning.png"
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return "\n".join(lines) + f"\n\nplot: {dest.relative_to(ROOT)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="extra arguments (KEY VALUE or a.b=c) go to the train script unchanged")
    ap.add_argument("--arm", choices=sorted(ARMS))
    ap.add_argument("--steps", type=int, default=8, help="GRPO steps of the trained arms (N)")
    ap.add_argument("--test-freq", type=int, default=2, help="validate every K steps (and before and at the end)")
    ap.add_argument("--smoke", action="store_true", help="tiny batch and 8 validation questions (pipeline check)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--report", action="store_true", help="table and plot from --out")
    ap.add_argument("--simulator", default=str(SIMULATOR), help="simulate_sft: the fine-tuned simulator's directory")
    args, extra = ap.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.arm:
        rec = run_arm(args.arm, args.steps, args.test_freq, args.smoke, args.tag, extra, Path(args.out),
                      Path(args.simulator))
        print(f"{args.arm}: EM {rec['first_val_em']:.3f} -> {rec['final_val_em']:.3f} in {rec['wall_s']:.0f} s")
    if args.report or not args.arm:
        print(report(Path(args.out), PLOTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
