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
from transformers import AutoTokenizer

from verl.protocol import DataProto
from verl.utils.dataset import PromptDataset
from verl.workers.rollout import build_rollout_engine
from verl.workers.rollout.base import SamplingParams
from zerosearch.generation import GenerationConfig, SearchRolloutManager
from zerosearch.models import resolve_model_path
from zerosearch.reward import score_batch
from zerosearch.search import build_search_backend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/embedded/train.parquet")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-response-length", type=int, default=320)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--format", default="inline")
    ap.add_argument("--prefix", default="", help="assistant prefix, e.g. '<search>'")
    args = ap.parse_args()

    model = resolve_model_path("embedded")
    tok = AutoTokenizer.from_pretrained(model)
    ds = PromptDataset([args.data], tok, max_prompt_length=512, max_samples=args.prompts,
                       assistant_prefix=args.prefix)
    engine = build_rollout_engine(args.engine, model, max_model_len=1024)
    backend = build_search_backend({"mode": "local", "topk": args.topk})
    gen = GenerationConfig.from_dict({"max_prompt_length": 512, "max_response_length": args.max_response_length,
                                      "max_obs_length": 160, "topk": args.topk, "max_turns": args.max_turns,
                                      "observation_format": args.format})
    mgr = SearchRolloutManager(engine, tok, backend, gen, None)
    nt = ds.collate(list(range(len(ds))))
    batch = DataProto.from_dict(non_tensors=nt).repeat(args.n, interleave=True)
    t0 = time.time()
    out = mgr.run(batch, SamplingParams(temperature=args.temperature, max_tokens=args.max_response_length))
    secs = time.time() - t0
    texts = list(out.non_tensor_batch["response_text"])
    scores, per = score_batch(texts, list(out.non_tensor_batch["ground_truth"]),
                              list(out.non_tensor_batch["data_source"]), {"metric": "f1"})
    em = np.array([p["em"] for p in per]).reshape(-1, args.n)
    f1 = np.array([p["f1"] for p in per]).reshape(-1, args.n)
    searched = np.array([int(x) > 0 for x in out.non_tensor_batch["num_searches"]])
    answered = np.array([p["has_answer"] for p in per])
    res = {
        "engine": args.engine, "prompts": args.prompts, "n": args.n, "temperature": args.temperature,
        "searched_frac": float(searched.mean()), "answered_frac": float(answered.mean()),
        "em_mean": float(em.mean()), "f1_mean": float(f1.mean()),
        "groups_with_em_reward": float((em.max(1) > 0).mean()), "groups_with_f1_reward": float((f1.max(1) > 0).mean()),
        "groups_with_f1_variance": float((f1.std(1) > 0).mean()), "seconds": round(secs, 1),
    }
    print(json.dumps(res, indent=2))
    for t in texts[:3]:
        print("-----\n" + t)


if __name__ == "__main__":
    main()
