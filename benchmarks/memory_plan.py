"""The trainer's memory plan (verl.utils.memory_plan, verl.utils.memory_fit) against measurements, and the plan for
Qwen2.5-3B / 7B on 4 x 80 GB GPUs (FSDP full shard over 4 + colocated vLLM). The formulas live in the package;
this script only replays them.

`--plan` (arithmetic only): every bench_scaling.jsonl point replayed through the plan (the config of the point, with
the full-logits head those runs used) next to the measured peak RSS per process, then the GPU plan tables.

`--calibrate` measures the empirical inputs on this machine and appends them to bench_scaling.jsonl:
- the RSS of fresh interpreters that imported the runtime (a Ray worker with torch/transformers/FSDP/our workers,
  with and without vLLM; vLLM's model runner; the driver), behind verl.utils.memory_plan.RUNTIME;
- the peak RSS added by one steady-state actor update (`DataParallelPPOActor.update_policy`, FSDP2 on gloo, one rank,
  the chunked head; VmHWM reset after malloc_trim, the second of two updates so that gradients and AdamW states
  exist) for fp32 / bf16 compute, with and without gradient checkpointing, at two token counts: the slope is the
  bytes per token (a_layer, k_layer), the intercept the constant part (gathered weights, head, backward
  temporaries), each next to the plan's `update` phase.

    .venv/bin/python benchmarks/memory_plan.py --calibrate     # ~6 min on 2 cores
    .venv/bin/python benchmarks/memory_plan.py --plan
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import append_record  # noqa: E402

from verl.utils.memory_plan import (  # noqa: E402
    GB,
    HOST_SLACK,
    QWEN25_3B,
    QWEN25_7B,
    SMOLLM2_135M,
    Head,
    ModelDims,
    micro_pass,
    update_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_scaling.jsonl"
MIB = float(1 << 20)
RUNTIME_IMPORTS = {  # what each process has imported before any model
    "worker_rss_mb": "import ray, torch, transformers, torch.distributed; import verl.workers.fsdp_workers",
    "worker_vllm_rss_mb": "import ray, torch, transformers, vllm, torch.distributed; import verl.workers.fsdp_workers",
    "vllm_worker_rss_mb": "import torch, transformers, vllm; import vllm.v1.worker.cpu_worker",
    "driver_rss_mb": "import ray, torch, transformers; import verl.trainer.main_ppo, verl.trainer.ppo.ray_trainer",
}


def _records(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


# ---------------------------------------------------------------------------------------------- --plan
def cpu_table(results: Path) -> str:
    """Plan vs measured peak RSS per process for every bench_scaling point (latest record of each)."""
    from verl.trainer.main_ppo import compose_config
    from verl.utils.memory_fit import plan_config

    latest = {(r["prompts"], r["max_response_length"]): r for r in _records(results) if "prompts" in r}
    out = ["| point | planned actor GB | measured | ratio | planned rollout GB | measured | ratio | planned driver GB "
           "| measured |", "|---|---|---|---|---|---|---|---|---|"]
    for (prompts, length), r in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        overrides = [o for o in r["overrides"] if "<tmp>" not in o and "/tmp/" not in o
                     and not o.startswith(("data.train_files", "data.val_files"))]
        cfg = compose_config("ppo_trainer", overrides + ["actor_rollout_ref.actor.entropy_from_logits_with_chunking"
                                                         "=false"])  # those runs kept full logits
        plan = plan_config(cfg, "cpu", SMOLLM2_135M)
        roles = {k: v.get("peak_rss_mb", 0) * MIB / GB for k, v in r["roles"].items()}
        actor, rollout, driver = (plan.get(n).host / GB for n in ("actor", "rollout", "driver"))
        m_actor, m_rollout = roles.get("actor_worker", 0), roles.get("vllm_worker", 0) + roles.get(
            "vllm_engine_core", 0)
        out.append(f"| {prompts}x{length} | {actor:.2f} | {m_actor:.2f} | {m_actor / actor:.2f} | {rollout:.2f} | "
                   f"{m_rollout:.2f} | {m_rollout / rollout:.2f} | {driver:.2f} | {roles.get('driver', 0):.2f} |")
    return "\n".join(out)


def gpu_plan(d: ModelDims, *, gpus: int = 4, hbm: float = 80 * GB, per_gpu_traj: int = 80, prompt: int = 512,
             resp: int = 1536, budgets: tuple[int, ...] = (2048, 4096, 8192)) -> str:
    """Per GPU, colocated vLLM, gradient checkpointing, chunked head: GRPO with a reference model at each token
    budget, with and without FSDP2's CPU offload (param_offload: parameters, gradients and Adam states on the host),
    and PPO (GAE, KL in reward: reference + the critic on the same GPUs, half a bundle each)."""
    from verl.trainer.config import load_config
    from verl.utils.memory_fit import plan_config
    from verl.utils.memory_plan import Budget

    seq, P = prompt + resp, d.params()
    kv_need = per_gpu_traj * seq * d.kv_per_token(2)
    lines = [f"**{d.name}** ({P / 1e9:.2f} B params; per GPU: {per_gpu_traj} trajectories x {seq} tokens: KV "
             f"{kv_need / GB:.1f} GB, weights {2 * P / GB:.1f} GB in vLLM)", "",
             "| algorithm | token budget / GPU | param_offload | gpu_memory_utilization | actor + ref GB | critic GB | "
             "vLLM GB | total GB | fits | host GB / rank (offloaded states) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    util = round(min(0.9, (2 * P + kv_need + 3 * GB) / hbm + 0.005), 2)
    batch = per_gpu_traj * gpus // 5  # prompts per step: 5 samples each
    rows = [("grpo", b, False) for b in budgets] + [("grpo", b, True) for b in budgets] + \
        [("ppo", budgets[0], False), ("ppo", budgets[0], True)]
    for algo, budget, offload in rows:
        fsdp = {"param_offload": offload}
        ppo = algo == "ppo"
        cfg = load_config({
            "data": {"max_prompt_length": prompt, "max_response_length": resp, "train_batch_size": batch},
            "actor_rollout_ref": {"model": {"enable_gradient_checkpointing": True}, "actor": {
                "use_kl_loss": not ppo, "use_dynamic_bsz": True, "ppo_max_token_len_per_gpu": budget,
                "ppo_mini_batch_size": batch // 2, "fsdp_config": fsdp},
                "rollout": {"n": 5, "gpu_memory_utilization": util}},
            "critic": {"model": {"enable_gradient_checkpointing": True}, "use_dynamic_bsz": True,
                       "ppo_max_token_len_per_gpu": budget, "fsdp_config": fsdp},
            "algorithm": {"adv_estimator": "gae" if ppo else "grpo", "use_kl_in_reward": ppo},
            "trainer": {"n_gpus_per_node": gpus, "device": "cuda"}})
        plan = plan_config(cfg, "cuda", d, Budget(gpu=hbm, gpu_source="80 GB"))
        actor, rollout, critic = plan.get("actor"), plan.get("rollout").gpu, plan.get("critic")
        host = actor.host + (critic.host if critic else 0.0)
        lines.append(f"| {algo.upper()} | {budget} | {'yes' if offload else 'no'} | {util} | {actor.gpu / GB:.1f} | "
                     f"{critic.gpu / GB if critic else 0:.1f} | {rollout / GB:.1f} | {plan.gpu_total / GB:.1f} | "
                     f"{'yes' if plan.gpu_total <= hbm else 'NO'} | {host / GB:.1f} |")
    return "\n".join(lines)


def print_plan(results: Path = RESULTS) -> None:
    print("## CPU: SmolLM2-135M, the plan vs the measured peak RSS of bench_scaling's runs\n")
    print(cpu_table(results))
    print("\n## GPU plan: 4 x 80 GB, FSDP full shard over 4, colocated vLLM (and critic, for PPO)\n")
    for d in (QWEN25_3B, QWEN25_7B):
        print(gpu_plan(d) + "\n")


# ---------------------------------------------------------------------------------------------- --calibrate
def runtime_rss(code: str) -> float:
    """RSS (MB) of a fresh interpreter after running `code`."""
    probe = code + "\nfor l in open('/proc/self/status'):\n    l.startswith('VmRSS:') and print(l.split()[1])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def _batch(rows: int, prompt: int, resp: int):
    import torch

    from verl.protocol import DataProto

    ids = torch.randint(0, SMOLLM2_135M.vocab, (rows, prompt + resp))
    mask = torch.ones_like(ids)
    return DataProto.from_dict({"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1,
                                "responses": ids[:, prompt:], "response_mask": mask[:, prompt:],
                                "advantages": torch.randn(rows, resp)})


UPDATE_POINTS = tuple((dtype, ckpt, rows) for dtype in ("fp32", "bf16") for ckpt in (False, True) for rows in (2, 4))


def update_point(dtype: str, ckpt: bool, rows: int, prompt: int = 64, resp: int = 192) -> dict:
    """In this (fresh) process: peak RSS of a steady-state update_policy of `rows` x (prompt + resp) tokens,
    FSDP2 on gloo, one rank, next to the plan's actor process (runtime measured here instead of RUNTIME)."""
    import torch

    from verl.single_controller.dist import init_dist
    from verl.trainer.config import ActorConfig, OptimConfig
    from verl.utils import memory_usage
    from verl.workers.actor import DataParallelPPOActor
    from verl.workers.fsdp_utils import apply_fsdp2, build_optimizer, load_hf_model

    torch.set_num_threads(2)
    init_dist("cpu")
    runtime = memory_usage.peak_rss()
    module = apply_fsdp2(load_hf_model("embedded", gradient_checkpointing=ckpt), "cpu", 1,
                         param_dtype=torch.bfloat16 if dtype == "bf16" else None)
    cfg = ActorConfig(ppo_mini_batch_size=rows, ppo_micro_batch_size_per_gpu=rows, optim=OptimConfig(lr=1e-7))
    actor = DataParallelPPOActor(module, build_optimizer(module, cfg.optim), None, cfg, rollout_n=1)
    batch = _batch(rows, prompt, resp)
    actor.update_policy(batch)  # allocates the AdamW states
    memory_usage.reset_peaks(children=False)
    before = memory_usage.peak_rss()
    actor.update_policy(batch)
    peak = memory_usage.peak_rss()
    P = SMOLLM2_135M.params()
    planned = update_bytes(SMOLLM2_135M, micro_pass(prompt + resp, resp, rows=rows), w=4 if dtype == "fp32" else 2,
                           ckpt=ckpt, head=Head(cfg.entropy_from_logits_with_chunking, cfg.logits_chunk_size,
                                                cfg.entropy_checkpointing))
    # between updates the gradients are freed (zero_grad(set_to_none=True)): the update re-allocates them (4 P)
    return {"dtype": dtype, "ckpt": ckpt, "rows": rows, "prompt": prompt, "resp": resp,
            "runtime_mb": round(runtime / MIB, 1), "update_delta_mb": round((peak - before) / MIB, 1),
            "planned_delta_mb": round((HOST_SLACK * sum(planned.values()) + 4 * P) / MIB, 1),
            "peak_mb": round(peak / MIB, 1),
            "planned_peak_mb": round((runtime + 16 * P + HOST_SLACK * sum(planned.values())) / MIB, 1),
            "planned_parts_mb": {k: round(v / MIB, 1) for k, v in planned.items()}}


def update_peaks() -> list[dict]:
    """update_point for every UPDATE_POINTS entry, each in a fresh process."""
    out = []
    for dtype, ckpt, rows in UPDATE_POINTS:
        cmd = [sys.executable, __file__, "--point", dtype, str(int(ckpt)), str(rows)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(out[-1]), flush=True)
    return out


def calibrate(results: Path) -> dict:
    import torch

    torch.set_num_threads(2)
    rec = {"bench": "memory_plan_calibration", **{k: round(runtime_rss(v), 1) for k, v in RUNTIME_IMPORTS.items()}}
    print(json.dumps(rec), flush=True)
    rec["update"] = update_peaks()
    from bench_scaling import machine

    rec["machine"] = machine()
    append_record(results, rec)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibrate", action="store_true", help="measure the runtime baselines and the update peaks")
    ap.add_argument("--plan", action="store_true", help="print the CPU table and the GPU plan (no run)")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--point", nargs="+", metavar="DTYPE CKPT ROWS [PROMPT RESP]", help="one update_point (fp32 0 4)")
    args = ap.parse_args()
    if args.point:
        dtype, ckpt, *sizes = args.point
        print(json.dumps(update_point(dtype, bool(int(ckpt)), *map(int, sizes))))
        return 0
    if args.calibrate:
        calibrate(Path(args.results))
    if args.plan or not args.calibrate:
        print_plan(Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
