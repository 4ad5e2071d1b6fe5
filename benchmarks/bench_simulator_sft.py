"""Simulator fine-tuning benchmark: does SFT make a better search simulator than prompting the same model?

On held-out questions of the collected rows (split `val`: questions the simulator never trained on), each engine is
asked once for useful and once for noisy documents (`zerosearch.simulator.quality`):
- `local`: BM25 over the embedded corpus, the real engine the rows were collected from (it ignores the switch, so
  its two numbers are equal: the reference);
- `simulate_prompt`: the embedded SmolLM2-135M-Instruct served by vLLM, prompted with the one-shot instruction;
- `simulate_sft`: the same model after `bash scripts/train_simulator.sh` (the `--simulator` directory).
useful_hit = share of useful calls with a gold answer in some document (higher is better); noisy_leak = share of
noisy calls with a gold answer in some document (lower is better); docs/call = parsed documents over k.

    bash scripts/train_simulator.sh MAX_QUESTIONS 800 EVAL false   # ~12 min
    .venv/bin/python benchmarks/bench_simulator_sft.py               # ~6 min
Each engine appends one JSON line to benchmarks/results/bench_simulator_sft.jsonl; the table is printed and written
to benchmarks/results/bench_simulator_sft.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_simulator_sft.jsonl"


def evaluate(label: str, mode: str, data: str, limit: int, model: str | None) -> dict:
    cmd = [sys.executable, "-m", "zerosearch.simulator", "evaluate", "--data", data, "--mode", mode, "--limit",
           str(limit), "--label", label, "--results", str(RESULTS)]
    if model:
        cmd += ["--model", model]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label}: evaluate failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/simulator/sft.jsonl", help="rows written by the collect step")
    ap.add_argument("--simulator", default="checkpoints/simulator")
    ap.add_argument("--limit", type=int, default=64, help="held-out queries asked")
    args = ap.parse_args()
    meta = json.loads((ROOT / args.simulator / "simulator_sft.json").read_text())
    rows = [evaluate("local (BM25, reference)", "local", args.data, args.limit, None),
            evaluate("simulate_prompt (embedded)", "simulate_prompt", args.data, args.limit, "embedded"),
            evaluate("simulate_sft (fine-tuned)", "simulate_sft", args.data, args.limit, args.simulator)]
    s = meta["summary"]
    lines = [f"SFT: {s['train_rows']} rows, {s['steps']} steps, {s['train_s']:.0f} s; held-out token loss "
             f"{s['val_loss_before']:.3f} -> {s['val_loss_after']:.3f}", "",
             "| engine | queries | useful_hit | noisy_leak | docs/call useful / noisy | failed | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {int(r['queries'])} | {r['useful_hit']:.3f} | {r['noisy_leak']:.3f} | "
                     f"{r['useful_docs_per_call']:.2f} / {r['noisy_docs_per_call']:.2f} | "
                     f"{int(r['useful_failed'] + r['noisy_failed'])} | {r['seconds']:.0f} |")
    text = "\n".join(lines)
    (RESULTS.with_suffix(".md")).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
