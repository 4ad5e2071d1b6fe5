"""`python -m zerosearch.simulator {collect,finetune,evaluate}`: the simulation-tuning pipeline from the shell.

    python -m zerosearch.simulator collect --out data/simulator/sft.jsonl          # embedded world, local BM25
    python -m zerosearch.simulator finetune --data data/simulator/sft.jsonl --out checkpoints/simulator
    python -m zerosearch.simulator evaluate --data data/simulator/sft.jsonl --model checkpoints/simulator

`collect --search key=value ...` picks the real engine with `search.*` keys (mode=wiki retriever_url=...,
mode=google; the SerpAPI key comes from SER_API_KEY / SERPAPI_API_KEY and is never written anywhere).
`finetune` runs under `torchrun --nproc_per_node N -m zerosearch.simulator finetune ...` on several GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from verl.trainer.config import OptimConfig

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_TRAIN = ROOT / "data" / "embedded" / "train.parquet"


def _kv(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: {what} takes key=value pairs, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _coerce(default, key: str, text: str):
    """A --search value typed like the field's default (bool, int, float, list, dict; None-able strings)."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"error: --search {key}= takes true or false, got {text!r}")
        return text.lower() == "true"
    try:
        if isinstance(default, (int, float)):
            return type(default)(text)
        if isinstance(default, dict):
            return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"error: --search {key}={text!r}: {exc}") from None
    if isinstance(default, list):
        return [x for x in text.split(",") if x]
    return None if default is None and text.lower() == "none" else text


def _search_config(pairs: dict[str, str], default_mode: str):
    from zerosearch.search.config import SearchConfig

    defaults = SearchConfig(mode=default_mode)
    unknown = sorted(k for k in pairs if not hasattr(defaults, k))
    if unknown:
        raise SystemExit(f"error: unknown --search key(s) {unknown}; known: {', '.join(sorted(vars(defaults)))}")
    values = {"mode": default_mode, **{k: _coerce(getattr(defaults, k), k, v) for k, v in pairs.items()}}
    try:
        return SearchConfig(**values)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_collect(a: argparse.Namespace) -> int:
    import pandas as pd

    from zerosearch.search import build_search_backend
    from zerosearch.search.registry import real_modes
    from zerosearch.simulator import collect as col

    cfg = _search_config(_kv(a.search, "--search"), "local")
    if cfg.simulated:
        raise SystemExit(f"error: collect needs a real engine (--search mode={'|'.join(real_modes())}), got "
                         f"{cfg.mode!r}: a simulator cannot teach a simulator")
    queries: list = []
    for path in a.questions:
        if not Path(path).is_file():
            raise SystemExit(f"error: --questions {path}: no such parquet (the embedded world: python -m "
                             "zerosearch.data.world)")
        rows = pd.read_parquet(path).to_dict("records")
        queries += list(col.from_questions(rows[: a.max_questions] if a.max_questions > 0 else rows))
    queries += list(col.from_trajectory_logs(a.trajectories))
    backend = build_search_backend(cfg)
    try:
        rows = col.collect(queries, backend, k=a.topk, depth=a.depth, val_fraction=a.val_fraction)
    finally:
        backend.close()
    col.write_jsonl(rows, a.out)
    print(json.dumps({"out": str(a.out), "queries": len(set(queries)), **col.summary(rows)}))
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from zerosearch.simulator.sft import SFTConfig, finetune

    optim = OptimConfig(lr=a.lr, lr_warmup_steps_ratio=a.warmup_ratio, warmup_style="cosine",
                        min_lr_ratio=a.min_lr_ratio, weight_decay=a.weight_decay)
    cfg = SFTConfig(data=a.data, output_dir=a.out, model=a.model, epochs=a.epochs, batch_size=a.batch_size,
                    max_tokens_per_micro=a.max_tokens_per_micro, max_length=a.max_length, optim=optim,
                    param_dtype=a.param_dtype, gradient_checkpointing=a.gradient_checkpointing, device=a.device,
                    threads=a.threads, val_max_rows=a.val_max_rows, seed=a.seed, max_steps=a.max_steps)
    try:
        summary = finetune(cfg)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(summary))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from verl.single_controller.dist import find_free_port
    from zerosearch.search import build_search_backend
    from zerosearch.search.registry import simulated_modes
    from zerosearch.search.server_launch import start_simulation_server
    from zerosearch.simulator.quality import queries_from_rows, score

    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    queries = queries_from_rows(rows, a.split, a.limit)
    if not queries:
        raise SystemExit(f"error: {a.data} has no rows with split {a.split!r}")
    pairs = _kv(a.search, "--search")
    server = None
    if a.model and a.mode in simulated_modes():
        port = find_free_port()
        server = start_simulation_server(a.model, port=port, served_name="simulator")
        pairs.update({"ips": "127.0.0.1", "port": str(port), "simulation_llm": "simulator"})
    try:
        backend = build_search_backend(_search_config(pairs, a.mode))
        try:
            metrics = score(backend, queries, a.topk)
        finally:
            backend.close()
    finally:
        if server is not None:
            server.stop()
    rec = {"label": a.label or a.mode, "mode": a.mode, "model": a.model, "split": a.split, "topk": a.topk,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics}
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        with open(a.results, "a") as f:
            f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zerosearch.simulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("collect", help="label a real engine's documents useful/noisy -> SFT rows (JSONL)")
    c.add_argument("--out", required=True)
    c.add_argument("--questions", nargs="*", default=[str(EMBEDDED_TRAIN)],
                   help="parquet files in the Search-R1 schema (question, golden_answers); each question is a query")
    c.add_argument("--trajectories", nargs="*", default=[],
                   help="trainer trajectory logs (logs/train_generations.jsonl): their search_queries are queries")
    c.add_argument("--search", nargs="*", default=[], help="search.* keys of the real engine, e.g. mode=local "
                   "corpus_path=data/embedded/corpus.jsonl")
    c.add_argument("--topk", type=int, default=3, help="documents per example (the training TOPK)")
    c.add_argument("--depth", type=int, default=20, help="ranked documents read per query to find noisy ones")
    c.add_argument("--val-fraction", type=float, default=0.1, help="share of questions held out")
    c.add_argument("--max-questions", type=int, default=0, help="first N questions of each file (0: all)")
    c.set_defaults(func=cmd_collect)

    f = sub.add_parser("finetune", help="SFT a simulator on collected rows -> an HF directory vLLM serves")
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--model", default="embedded")
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--lr", type=float, default=2e-5)
    f.add_argument("--warmup-ratio", type=float, default=0.05)
    f.add_argument("--min-lr-ratio", type=float, default=0.1)
    f.add_argument("--weight-decay", type=float, default=0.01)
    f.add_argument("--batch-size", type=int, default=32, help="rows per optimizer step, all ranks together")
    f.add_argument("--max-tokens-per-micro", type=int, default=4096)
    f.add_argument("--max-length", type=int, default=1024)
    f.add_argument("--param-dtype", default="auto", help="auto | fp32 | bf16 (compute dtype)")
    f.add_argument("--gradient-checkpointing", action="store_true")
    f.add_argument("--device", default="auto")
    f.add_argument("--threads", type=int, default=0)
    f.add_argument("--val-max-rows", type=int, default=256)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-steps", type=int, default=-1)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("evaluate", help="useful-hit / noisy-leak of a simulator on held-out queries")
    e.add_argument("--data", required=True, help="collected rows; their --split queries are asked")
    e.add_argument("--split", default="val")
    e.add_argument("--limit", type=int, default=64, help="at most this many queries (0: all)")
    e.add_argument("--mode", default="simulate_sft", help="simulate_sft | simulate_prompt | local | wiki | google")
    e.add_argument("--model", default=None, help="a local simulator to serve for the evaluation (dir or embedded)")
    e.add_argument("--search", nargs="*", default=[], help="other search.* keys (ips=, port=, simulation_llm=, ...)")
    e.add_argument("--topk", type=int, default=3)
    e.add_argument("--label", default="", help="name of this row in the results file")
    e.add_argument("--results", default=None, help="append the metrics as one JSON line to this file")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from verl.utils import reaper

    reaper.guard()  # `evaluate` may start a simulation server: SIGTERM / SIGHUP stop it like Ctrl-C
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print(f"stopped ({e or 'SIGINT'})", file=sys.stderr)
        return reaper.exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
