"""The embedded test split evaluated with local BM25: the base model and the quickstart checkpoint, side by side.

Runs `scripts/evaluate.sh` once per model, one after the other on the same machine and settings (the whole
`data/embedded/test.parquet`, greedy, the default vLLM engine), then `--compare`. Appends one record per model
(figures per dataset and Avg, questions/s, the generation time, tokens, searches, host) to
`benchmarks/results/bench_eval.jsonl` and writes the comparison to `benchmarks/results/bench_eval.md`.

    .venv/bin/python benchmarks/bench_eval.py                      # base vs checkpoints/zerosearch/quickstart
    .venv/bin/python benchmarks/bench_eval.py --models embedded other/model/dir --args "ROLLOUT hf"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_rollout import machine_info
from results_io import append_record, portable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["embedded", "checkpoints/zerosearch/quickstart"])
    ap.add_argument("--args", default="", help="extra KEY VALUE pairs for scripts/evaluate.sh")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval-"))
    outs, names, recs = [], [], []
    for model in a.models:
        name = "base" if model == "embedded" else Path(model.rstrip("/")).name
        out = tmp / name
        cmd = ["bash", "scripts/evaluate.sh", "MODEL_PATH", model, "DATA_PATH", "data/embedded", "SEARCH_ENGINE",
               "local", "OUT", str(out), *shlex.split(a.args)]
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"evaluation of {model} failed (exit {proc.returncode}); see {out / 'eval.log'}", file=sys.stderr)
            return 1
        summary = json.loads((out / "summary.json").read_text())
        res = summary["results"]
        shown = f"bash scripts/evaluate.sh MODEL_PATH {model} DATA_PATH data/embedded SEARCH_ENGINE local {a.args}"
        rec = {"model": model, "command": shown.strip(),
               "settings": {k: summary["settings"][k] for k in ("rollout", "dtype", "device", "max_turns", "topk",
                                                                 "n", "temperature", "batch_size")},
               "questions": summary["questions"], "questions_per_s": summary["questions_per_s"],
               "generation_s": summary["generation_s"], "cost": summary["cost"],
               "em": {s: f["em"] for s, f in res["sources"].items()} | {"avg": res["avg"]["em"],
                                                                        "overall": res["overall"]["em"]},
               "f1": {s: f["f1"] for s, f in res["sources"].items()} | {"avg": res["avg"]["f1"]},
               "answer_rate": res["avg"]["has_answer"], "searches_per_question": res["avg"]["num_searches"],
               "machine": machine_info()}
        recs.append(append_record(RESULTS / "bench_eval.jsonl", rec))
        outs.append(str(out))
        names.append(name)
        print(f"{model}: {summary['questions']} questions at {summary['questions_per_s']:.2f} questions/s", flush=True)
    cmp = subprocess.run([sys.executable, "-m", "zerosearch.eval", "--compare", *outs], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    text = render(recs, names, cmp.stdout, " ".join(sys.argv[1:]))
    (RESULTS / "bench_eval.md").write_text(text)
    print(text)
    return 0


def render(recs: list[dict], names: list[str], compare: str, argv: str) -> str:
    """The results page: the command, the host, speed and behaviour per model, then `--compare`'s tables."""
    info = recs[0]["machine"]
    lines = [f"# bench_eval ({info['date'][:10]}, {info['cpu']}, {info['cores']} cores)", "",
             f"`.venv/bin/python benchmarks/bench_eval.py {argv}`".replace(" `", "`"), "",
             "| model | questions | questions/s | generation s | answer rate | searches / question | policy tokens |",
             "|---|---|---|---|---|---|---|"]
    for rec, name in zip(recs, names):
        lines.append(f"| {name} | {rec['questions']} | {rec['questions_per_s']:.2f} | {rec['generation_s']:.0f} | "
                     f"{100 * rec['answer_rate']:.1f}% | {rec['searches_per_question']:.2f} | "
                     f"{rec['cost']['tokens_generated']} |")
    return "\n".join(lines) + "\n\n" + portable(compare).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
