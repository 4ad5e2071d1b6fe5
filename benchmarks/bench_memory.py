"""Actor update peak memory: one micro-batch of 8 rows x 832 tokens (512 prompt + 320 response), fp32.

Each variant runs in a fresh process (so the peaks don't mix): the embedded SmolLM2-135M under FSDP2 on a 1-rank gloo
group, fp32 compute, AdamW, one `DataParallelPPOActor.update_policy` call on a synthetic batch of the quickstart's
shape (every response token real, random advantages). The peak RSS of the update is read from VmHWM after handing
freed heap back (malloc_trim) and resetting it (`/proc/self/clear_refs`) just before the update; `base` is the RSS
just before it (weights, optimizer state, the runtime). The update is timed over `--repeats` calls (the first
one included).

Variants (side by side in one run):
- `today`: the code path before the chunked head: full vocabulary-wide logits of the micro-batch, no gradient
  checkpointing, 8 rows per micro-batch (`ppo_micro_batch_size_per_gpu: 8`, the launcher's old default);
- `chunked`: log-probs / entropy from hidden states in chunks of 512 positions, recomputed in backward;
- `chunked_ckpt`: the same plus gradient checkpointing of the decoder layers;
- `chunked_budget`: chunked, no checkpointing, token-budget micro-batches of 2,048 tokens (2 rows each: the
  launcher's CPU default, `use_dynamic_bsz` with `ppo_max_token_len_per_gpu` 2048);
- `chunked_ckpt_budget`: the same plus gradient checkpointing;
- `chunked_ckpt_mmap1m`: `chunked_ckpt` with glibc's mmap threshold fixed at 1 MB (`MALLOC_MMAP_THRESHOLD_`): how much
  of its peak is freed heap that glibc keeps resident.

    .venv/bin/python benchmarks/bench_memory.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_rollout import machine_info
from results_io import append_record

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "today": dict(entropy_from_logits_with_chunking=False, checkpointing=False),
    "chunked": dict(entropy_from_logits_with_chunking=True, checkpointing=False),
    "chunked_ckpt": dict(entropy_from_logits_with_chunking=True, checkpointing=True),
    "chunked_budget": dict(entropy_from_logits_with_chunking=True, checkpointing=False, use_dynamic_bsz=True,
                           ppo_max_token_len_per_gpu=2048),
    "chunked_ckpt_budget": dict(entropy_from_logits_with_chunking=True, checkpointing=True, use_dynamic_bsz=True,
                                ppo_max_token_len_per_gpu=2048),
    "chunked_ckpt_mmap1m": dict(entropy_from_logits_with_chunking=True, checkpointing=True),
}
# glibc keeps freed heap chunks below its (dynamic, up to 32 MB) mmap threshold resident; with a fixed 1 MB
# threshold every larger tensor is mmapped and returned on free, so RSS follows live memory (at a page-fault cost)
ENV = {"chunked_ckpt_mmap1m": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}
GIB = 1 << 30


def child(name: str, rows: int, prompt: int, response: int, repeats: int, threads: int) -> dict:
    import torch

    from verl.protocol import DataProto
    from verl.single_controller.dist import init_dist
    from verl.trainer.config import ActorConfig, OptimConfig
    from verl.utils.memory_usage import peak_rss, reset_peaks
    from verl.utils.models import resolve_model_path
    from verl.workers.actor import DataParallelPPOActor
    from verl.workers.fsdp_utils import apply_fsdp2, build_optimizer, load_hf_model

    torch.set_num_threads(threads)
    v = dict(VARIANTS[name])
    ckpt = v.pop("checkpointing")
    init_dist("cpu")
    module = apply_fsdp2(load_hf_model(resolve_model_path("embedded"), gradient_checkpointing=ckpt), "cpu", 1)
    cfg = ActorConfig(ppo_mini_batch_size=rows, ppo_micro_batch_size_per_gpu=rows, optim=OptimConfig(lr=1e-7), **v)
    actor = DataParallelPPOActor(module, build_optimizer(module, cfg.optim), None, cfg)
    g = torch.Generator().manual_seed(0)
    length = prompt + response
    batch = {"input_ids": torch.randint(10, 40000, (rows, length), generator=g),
             "attention_mask": torch.ones(rows, length, dtype=torch.long)}
    batch["responses"] = batch["input_ids"][:, prompt:]
    batch["response_mask"] = torch.ones(rows, response, dtype=torch.long)
    batch["advantages"] = torch.randn(rows, response, generator=g)
    data = DataProto.from_dict(batch, meta_info={"temperature": 1.0})
    times, peaks, bases = [], [], []
    for _ in range(repeats):  # the first call also allocates the AdamW state (~0.1 s, 1 GiB): its peak counts
        reset_peaks(children=False)  # malloc_trim, then VmHWM := current RSS (the actor trims at an update's start)
        bases.append(peak_rss() / GIB)
        start = time.perf_counter()
        actor.update_policy(data)
        times.append(time.perf_counter() - start)
        peaks.append(peak_rss() / GIB)
    return {"variant": name, "peak_rss_gib": max(peaks), "base_rss_gib": bases[-1],
            "update_peak_over_base_gib": max(p - b for p, b in zip(peaks, bases)), "update_s": times,
            "update_s_median": statistics.median(times)}


def host_info() -> dict:
    """bench_rollout's machine record plus the host kind (native bf16 or not)."""
    from verl.workers.fsdp_utils import cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()
    return {**machine_info(), "native_bf16": bf16,
            "host_kind": "Xeon with AMX/avx512_bf16" if bf16 else "no avx512_bf16 (fp32 host)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--response", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_memory.jsonl"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.prompt, args.response, args.repeats, args.threads)))
        return
    results = []
    for name in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--rows", str(args.rows), "--prompt", str(args.prompt),
               "--response", str(args.response), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, **ENV.get(name, {})})
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(res), flush=True)
        results.append(res)
    by = {r["variant"]: r for r in results}
    ratios = {}
    if "today" in by:
        for r in results:
            ratios[r["variant"]] = {"peak_rss": r["peak_rss_gib"] / by["today"]["peak_rss_gib"],
                                    "update_time": r["update_s_median"] / by["today"]["update_s_median"]}
    record = {"bench": "actor_update_memory", "machine": host_info(), "settings": vars(args) | {"child": None},
              "results": results, "ratios_vs_today": ratios, "time": time.strftime("%Y-%m-%d %H:%M")}
    append_record(args.out, record)
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
