"""Base rate of the embedded policy on the embedded world: how often a sampled trajectory searches,
answers, and is rewarded (EM / F1 > 0), with real (BM25) search. GRPO learns nothing from a group in
which no sample is rewarded, so this number decides the quickstart's group size and batch.

    .venv/bin/python benchmarks/base_rate.py --prompts 32 --n 4 --engine vllm --temperature 1.0
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from results_io import append_record
from transformers import AutoTokenizer

from verl.protocol import DataProto
from verl.utils.dataset import PromptDataset
from verl.workers.rollout import build_rollout_engine
from verl.workers.rollout.base import SamplingParams
from zerosearch.models import resolve_model_path
from zerosearch.reward import score_batch
from zerosearch.rollout import GenerationConfig, LockstepRollout
from zerosearch.search import build_search_backend


def measure(engine, tok, args, fmt: str, prefix: str, temperature: float, data: str) -> dict:
    ds = PromptDataset([data], tok, max_prompt_length=512, max_samples=args.prompts, assistant_prefix=prefix)
    backend = build_search_backend({"mode": "local", "topk": args.topk})
    gen = GenerationConfig(max_prompt_length=512, max_response_length=args.max_response_length, max_obs_length=160,
                           topk=args.topk, max_turns=args.max_turns, observation_format=fmt)
    rollout = LockstepRollout(tok, backend, gen)
    n = args.n if temperature > 0 else 1
    batch = DataProto.from_dict(non_tensors=ds.collate(list(range(len(ds))))).repeat(n, interleave=True)
    t0 = time.time()
    out = rollout(batch, engine, SamplingParams(temperature=temperature, max_tokens=args.max_response_length), 0)
    rollout.close()
    secs = time.time() - t0
    nt = out.non_tensor_batch
    texts = list(nt["response_text"])
    _, per = score_batch(texts, list(nt["ground_truth"]), list(nt["data_source"]), {"metric": "f1"})
    em = np.array([p["em"] for p in per]).reshape(-1, n)
    f1 = np.array([p["f1"] for p in per]).reshape(-1, n)
    return {
        "format": fmt, "prefix": prefix, "temperature": temperature, "n": n, "prompts": len(ds),
        "searched_frac": float(np.mean([int(x) > 0 for x in nt["num_searches"]])),
        "answered_frac": float(np.mean([p["has_answer"] for p in per])),
        "em_mean": float(em.mean()), "f1_mean": float(f1.mean()),
        "groups_with_em_reward": float((em.max(1) > 0).mean()),
        "groups_with_f1_variance": float((f1.std(1) > 0).mean()),
        "seconds": round(secs, 1), "example": texts[0][:600],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/embedded/train.parquet")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-response-length", type=int, default=320)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--variants", default="inline::1.0",
                    help="space-separated format:prefix:temperature, e.g. 'inline:<search>:0.7 chat::0'")
    ap.add_argument("--out", default="benchmarks/results/base_rate.jsonl")
    args = ap.parse_args()

    model = resolve_model_path("embedded")
    tok = AutoTokenizer.from_pretrained(model)
    engine = build_rollout_engine(args.engine, model, max_model_len=1024, cpu_threads=2)
    for v in args.variants.split():
        fmt, prefix, temp = v.split(":")
        res = measure(engine, tok, args, fmt, prefix, float(temp), args.data)
        print(json.dumps(append_record(args.out, res), indent=1), flush=True)


if __name__ == "__main__":
    main()
