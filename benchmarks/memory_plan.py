"""Memory accounting of our GRPO trainer: the formulas that explain the CPU measurements of bench_scaling.py and,
with the same formulas, the plan for Qwen2.5-3B / 7B on 4 x 80 GB GPUs (FSDP full shard over 4 + colocated vLLM).

Training process (one FSDP rank, N ranks, P parameters, bf16 compute with fp32 master weights, AdamW):
    states      = 16 P / N        fp32 master params 4 + fp32 grads 4 + AdamW exp_avg 4 + exp_avg_sq 4
    reference   =  4 P / N        only with a KL term; our reference is loaded in fp32 like the actor
    bf16 copies =  2 (P_root + 2 P_layer)   FSDP2 all-gathers one decoder layer at a time (+1 prefetched) and keeps
                                  the root unit (embeddings, lm_head, final norm) gathered between forward and backward
    activations (micro-batch of b rows of T tokens, R of them response tokens, L layers):
        no checkpointing:   b T L a_layer            a_layer = 20 h + 4 h_kv + 8 I bytes per token (bf16, eager HF
                                                     Llama/Qwen2 block: 2 RMSNorms at ~6h each (fp32 input + bf16
                                                     output), q, rotated q, sdpa output, o-proj input at 2h, k and v
                                                     at 2h_kv, SwiGLU gate, up, silu(gate), product at 2I each;
                                                     the 20h is calibrated: hooks measured 24.8 kB vs 24.6 kB here)
        with checkpointing: b T (L 2h + a_layer)     layer inputs kept, one layer recomputed at a time
        + logits head:      b R V 14 bytes           our log-prob path keeps logits for the response positions: bf16
                                                     logits 2 + fp32 copy 4 + softmax/entropy or gradient temporaries 8
    no-sync grads     = +4 P   with gradient accumulation over micro-batches our actor skips the reduce-scatter
                        before the last micro-batch (`set_requires_gradient_sync(False)`); FSDP2 then keeps the
                        *unsharded* gradients, in the fp32 reduce dtype, on every rank: 4 P, not 4 P / N, alive
                        through the next micro-batch's forward (within a single pass they fill up while the logits
                        are freed, which is why --calibrate's one-pass no-sync check adds little)
    optimizer step    = +4 P / N transient (foreach AdamW's sqrt(exp_avg_sq) temporaries)
    weight sync       = +8 P transient in the current code (full fp32 state dict gathered on every rank, 4 P, plus the
                        safetensors serialisation buffer, 4 P, in host RAM), written to disk and reloaded by vLLM
    peak = runtime + states + reference + max(bf16 copies + activations + no-sync grads, optimizer step, weight sync)
Rollout engine (vLLM, one engine per rank, TP 1): weights w P (fp32 on CPU, bf16 on GPU) + KV cache
(`kv_cache_space_gb` on CPU; on GPU gpu_memory_utilization x 80 GB minus weights and activations), KV per token
2 L h_kv bytes(dtype). On CPU vLLM also repacks the linear weights for its GEMM kernels (another w P).

`--calibrate` measures the two empirical inputs on this machine: the RSS of a process that has imported the
runtime (torch, transformers, vLLM, Ray, our workers), and the peak RSS added by one micro-batch forward+backward of
the 135M model under FSDP2 bf16 (VmHWM reset via /proc/self/clear_refs) next to the formula, plus the bytes autograd
saves per token per layer (saved-tensor hooks). `--plan` prints both tables for the .md (arithmetic only).

    flock /tmp/zs-heavy.lock timeout 600 .venv/bin/python benchmarks/memory_plan.py --calibrate
    .venv/bin/python benchmarks/memory_plan.py --plan
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_scaling.jsonl"
GB, GIB, MIB = 1e9, 1 << 30, 1 << 20
HEAD_BYTES = 14  # per response token per vocabulary entry (see the module docstring)


@dataclass(frozen=True)
class Dims:
    name: str
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @property
    def kv(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def layer_params(self) -> int:
        h, kv, i = self.hidden, self.kv, self.inter
        return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h + ((h + 2 * kv) if self.qkv_bias else 0)

    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def act_layer(self) -> int:
        """Bytes saved for backward per token per decoder layer (bf16, no checkpointing)."""
        return 20 * self.hidden + 4 * self.kv + 8 * self.inter

    def kv_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv * dtype_bytes


SMOLLM2_135M = Dims("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True, False)
QWEN25_3B = Dims("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True, True)
QWEN25_7B = Dims("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False, True)


def activations(d: Dims, rows: int, seq: int, resp: int, ckpt: bool) -> tuple[float, float]:
    """(decoder-layer bytes, logits-head bytes) of one micro-batch."""
    layers = rows * seq * ((d.layers * 2 * d.hidden + d.act_layer()) if ckpt else d.layers * d.act_layer())
    return float(layers), float(rows * resp * d.vocab * HEAD_BYTES)


def train_memory(d: Dims, *, shards: int, rows: int, seq: int, resp: int, ckpt: bool, ref: bool, accum: bool,
                 runtime: float = 0.0) -> dict[str, float]:
    """Components (bytes) of one training rank and its peak; see the module docstring."""
    P = d.params()
    layer_act, head_act = activations(d, rows, seq, resp, ckpt)
    c = {"runtime": runtime, "states 16P/N": 16 * P / shards, "reference 4P/N": 4 * P / shards if ref else 0.0,
         "bf16 gathered": 2.0 * (d.root_params() + 2 * d.layer_params()), "act layers": layer_act,
         "act logits": head_act, "no-sync grads 4P": 4.0 * P if accum else 0.0,
         "optimizer step +4P/N": 4 * P / shards, "weight sync +8P": 8.0 * P}
    base = c["runtime"] + c["states 16P/N"] + c["reference 4P/N"]
    # the unsharded grads of micro-batch k stay alive through the forward of micro-batch k+1: they add up
    fwd_bwd = c["bf16 gathered"] + layer_act + head_act + c["no-sync grads 4P"]
    c["peak"] = base + max(fwd_bwd, c["optimizer step +4P/N"], c["weight sync +8P"])
    c["peak fwd/bwd"] = base + fwd_bwd
    return c


# ---------------------------------------------------------------------------------------------- CPU vs measured
def cpu_table(results: Path, runtime: float, vllm_runtime: float, prompt_tokens: int = 57) -> str:
    """Formula vs measured peak RSS for every bench_scaling point (135M, 1 rank, micro-batch rows from the record)."""
    d, P = SMOLLM2_135M, SMOLLM2_135M.params()
    latest = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if "prompts" in r:
            latest[(r["prompts"], r["max_response_length"])] = r
    out = ["| point | act layers GB | act logits GB | formula actor worker GB | measured GB | ratio | "
           "formula vLLM worker GB | measured GB | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for (prompts, length), r in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows = min(r["micro_batch_per_gpu"], r["batch_rows"])
        m = train_memory(d, shards=1, rows=rows, seq=prompt_tokens + length, resp=length, ckpt=False, ref=False,
                         accum=r["batch_rows"] > rows, runtime=runtime)
        kv = 1.0 * GIB  # actor_rollout_ref.rollout.kv_cache_space_gb
        vllm = vllm_runtime + 2 * 4 * P + kv  # fp32 weights + the CPU GEMM repack of them
        actor = r["roles"].get("actor_worker", {}).get("peak_rss_mb", 0) * MIB
        engine = r["roles"].get("vllm_worker", {}).get("peak_rss_mb", 0) * MIB
        out.append(f"| {prompts}x{length} | {m['act layers'] / GB:.2f} | {m['act logits'] / GB:.2f} | "
                   f"{m['peak'] / GB:.2f} | {actor / GB:.2f} | {actor / m['peak']:.2f} | {vllm / GB:.2f} | "
                   f"{engine / GB:.2f} | {engine / vllm:.2f} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- GPU plan
def gpu_plan(d: Dims, *, gpus: int = 4, hbm: float = 80 * GB, per_gpu_traj: int = 80, seq: int = 2048,
             resp: int = 1536, micro_rows: tuple[int, ...] = (1, 2, 4), vllm_act: float = 3 * GB,
             context: float = 1.5 * GB) -> str:
    P = d.params()
    kv_need = per_gpu_traj * seq * d.kv_per_token(2)
    vllm_need = 2 * P + vllm_act + kv_need
    util = vllm_need / hbm
    lines = [f"**{d.name}** ({P / 1e9:.2f} B params; per GPU: {per_gpu_traj} trajectories x {seq} tokens)",
             "", f"- vLLM (TP 1, bf16): weights 2P = {2 * P / GB:.1f} GB, activations ~{vllm_act / GB:.0f} GB, KV for "
             f"all trajectories at once {per_gpu_traj} x {seq} x {d.kv_per_token(2) / 1e3:.1f} kB = "
             f"{kv_need / GB:.1f} GB -> needs gpu_memory_utilization >= {util:.2f} ({vllm_need / GB:.1f} GB)",
             "", "| micro rows/GPU | grads between micro-batches | states 16P/4 | ref 4P/4 | bf16 gathered | "
             "act layers (ckpt) | act logits | no-sync grads 4P | train peak | + vLLM + context | fits 80 GB | "
             "sync peak (current code) |", "|" + "---|" * 12]
    for rows in micro_rows:
        for accum in (True, False):
            m = train_memory(d, shards=gpus, rows=rows, seq=seq, resp=resp, ckpt=True, ref=True, accum=accum)
            total = m["peak fwd/bwd"] + vllm_need + context
            sync = m["states 16P/N"] + m["reference 4P/N"] + 4 * P + vllm_need + context  # 4P of the 8P on the GPU
            lines.append(f"| {rows} | {'unsharded (no-sync)' if accum else 'reduce-scattered'} | "
                         + " | ".join(f"{m[k] / GB:.1f}" for k in ("states 16P/N", "reference 4P/N", "bf16 gathered",
                                                                    "act layers", "act logits", "no-sync grads 4P",
                                                                    "peak fwd/bwd"))
                         + f" | {total / GB:.1f} | {'yes' if total <= hbm else 'NO'} | {sync / GB:.1f} |")
    return "\n".join(lines)


def print_plan(results: Path = RESULTS) -> None:
    cal = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        r = json.loads(line)
        if r.get("bench") == "bench_scaling_calibration":
            cal = r
    runtime = cal.get("runtime_rss_mb", 0) * MIB
    vllm_runtime = cal.get("vllm_runtime_rss_mb", 0) * MIB
    print(f"## CPU: SmolLM2-135M ({SMOLLM2_135M.params() / 1e6:.1f} M params), formula vs measured peak RSS\n")
    print(f"runtime baseline (measured, --calibrate): actor worker {runtime / GB:.2f} GB, vLLM worker "
          f"{vllm_runtime / GB:.2f} GB\n")
    print(cpu_table(results, runtime, vllm_runtime))
    print("\n## GPU plan: 4 x 80 GB, FSDP full shard over 4, colocated vLLM, GRPO with KL (reference model), "
          "gradient checkpointing\n")
    for d in (QWEN25_3B, QWEN25_7B):
        print(gpu_plan(d) + "\n")


# ---------------------------------------------------------------------------------------------- calibration
RUNTIME_IMPORTS = {  # what the actor worker and the vLLM worker processes have loaded before any model
    "runtime_rss_mb": "import ray, torch, transformers, vllm, torch.distributed; import verl.workers.fsdp_workers",
    "vllm_runtime_rss_mb": "import torch, transformers, vllm; import vllm.v1.worker.cpu_worker",
}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def runtime_rss(code: str) -> float:
    """RSS (MB) of a fresh interpreter after running `code`."""
    probe = code + "\nfor l in open('/proc/self/status'):\n    l.startswith('VmRSS:') and print(l.split()[1])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def saved_bytes_per_token_layer(tokens: int = 1024) -> float:
    """Bytes autograd keeps per token per decoder layer for the 135M model in bf16 (parameters excluded)."""
    import torch

    from verl.workers.fsdp_utils import load_hf_model

    model = load_hf_model("embedded").to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, SMOLLM2_135M.vocab, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
    return sum(seen.values()) / (SMOLLM2_135M.layers * tokens)


def micro_batch_peaks(rows: int, prompt: int, lengths: tuple[int, ...]) -> list[dict]:
    """Peak RSS added by one forward+backward of a micro-batch (FSDP2, bf16 compute, our log-prob path)."""
    import torch

    from verl.protocol import DataProto
    from verl.single_controller.dist import init_dist
    from verl.trainer.config import ActorConfig
    from verl.workers.actor import DataParallelPPOActor
    from verl.workers.fsdp_utils import apply_fsdp2, load_hf_model

    init_dist("cpu")
    model = apply_fsdp2(load_hf_model("embedded"), "cpu", 1, param_dtype=torch.bfloat16)
    actor = DataParallelPPOActor(model, None, None, ActorConfig(), rollout_n=1)
    out = []
    libc = ctypes.CDLL("libc.so.6")
    for resp in lengths:
        ids = torch.randint(0, SMOLLM2_135M.vocab, (rows, prompt + resp))
        mask = torch.ones_like(ids)
        micro = DataProto.from_dict({"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1,
                                     "responses": ids[:, prompt:], "response_mask": mask[:, prompt:]})
        for _ in range(2):  # the first pass allocates the fp32 grads; measure the second
            libc.malloc_trim(0)  # hand cached free heap pages back, so RSS is live memory before the pass
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before = _status_mb("VmRSS")
            log_probs, _ = actor._forward(micro, 1.0, "metric")
            (-log_probs.mean()).backward()
            peak = _status_mb("VmHWM") - before
        layer_act, head_act = activations(SMOLLM2_135M, rows, prompt + resp, resp, ckpt=False)
        bf16 = 2.0 * (SMOLLM2_135M.root_params() + 2 * SMOLLM2_135M.layer_params())
        out.append({"rows": rows, "prompt": prompt, "resp": resp, "measured_peak_mb": round(peak, 1),
                    "formula_mb": round((layer_act + head_act + bf16) / MIB, 1),
                    "formula_layers_mb": round(layer_act / MIB, 1), "formula_logits_mb": round(head_act / MIB, 1)})
        print(out[-1], flush=True)
    # gradient accumulation as the actor does it: no reduce-scatter before the last micro-batch, so FSDP2 keeps
    # unsharded gradients (fp32, the reduce dtype) between micro-batches
    model.set_requires_gradient_sync(False)
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    log_probs, _ = actor._forward(micro, 1.0, "metric")
    (-log_probs.mean()).backward()
    out.append({"rows": rows, "prompt": prompt, "resp": lengths[-1], "no_sync": True,
                "measured_peak_mb": round(_status_mb("VmHWM") - before, 1),
                "unsharded_fp32_grads_mb": round(4 * SMOLLM2_135M.params() / MIB, 1)})
    print(out[-1], flush=True)
    model.set_requires_gradient_sync(True)
    return out


def calibrate(results: Path) -> dict:
    import torch

    torch.set_num_threads(2)
    rec = {"bench": "bench_scaling_calibration", **{k: round(runtime_rss(v), 1) for k, v in RUNTIME_IMPORTS.items()}}
    rec["saved_bytes_per_token_layer"] = round(saved_bytes_per_token_layer(), 1)
    rec["formula_bytes_per_token_layer"] = SMOLLM2_135M.act_layer()
    rec["micro_batch"] = micro_batch_peaks(8, 57, (64, 128, 256))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scaling import machine

    rec["machine"] = machine()
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibrate", action="store_true", help="measure the runtime baseline and activation bytes")
    ap.add_argument("--plan", action="store_true", help="print the CPU table and the GPU plan (no run)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    if args.calibrate:
        print(json.dumps(calibrate(Path(args.results)), indent=1))
    if args.plan or not args.calibrate:
        print_plan(Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
