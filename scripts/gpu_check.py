"""Actor-update throughput and MFU on one device, without Ray, vLLM or Hydra (`scripts/gpu_check.sh` runs it).

A randomly initialised model of Qwen2.5-3B's shape (`--shape qwen2.5-3b`; `tiny` for a CPU smoke run), FSDP2 over a
1-rank process group (NCCL on CUDA, gloo on CPU), bf16 compute on CUDA (fp32 master weights and Adam, as the trainer),
gradient checkpointing on, and the project's own `DataParallelPPOActor.update_policy` on `--batch` rows of
`--prompt-len` + `--response-len` tokens. Figures (median over `--steps` timed updates after one warm-up), written as
JSON to `--out`: tokens/s of the update (all tokens of the rows, prompt included), model TFLOP/s and MFU. Model FLOPs
per token = 6 x params + 12 x layers x hidden x sequence length (PaLM's count, no credit for the recomputed forward of
gradient checkpointing); peak = the device's dense bf16 figure from `PEAK_TFLOPS` (or `--peak-tflops`).
Runs on torch 2.11 and transformers 5.17 (the bare GPU machines this project sometimes has).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("gpu_check")

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "RTX 4090": 165.0}

SHAPES = {  # transformers config kwargs
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=True),
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def init_single_rank(device: str) -> None:
    """A 1-rank default process group (what FSDP2's device mesh needs), on a free local port."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)


def random_model(shape: str, device: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(SHAPES[shape])
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    config.use_cache = False
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def random_batch(rows: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0):
    """Full-length rows (no padding): every token is real, so tokens/s counts what was computed."""
    from verl.protocol import DataProto

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, vocab, (rows, prompt_len), generator=g)
    responses = torch.randint(10, vocab, (rows, response_len), generator=g)
    seq = prompt_len + response_len
    attn = torch.ones(rows, seq, dtype=torch.long)
    return DataProto.from_dict({
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
        "attention_mask": attn, "position_ids": torch.arange(seq).expand(rows, seq).clone(),
        "response_mask": torch.ones(rows, response_len, dtype=torch.long),
        "advantages": torch.randn(rows, response_len, generator=g),
    })


def measure_update(shape: str = "qwen2.5-3b", device: str = "cuda", rows: int = 8, micro: int = 2,
                   prompt_len: int = 512, response_len: int = 512, steps: int = 3,
                   peak: float | None = None) -> dict:
    """Tokens/s, TFLOP/s and MFU of the actor update (see the module docstring)."""
    from verl.trainer.config import ActorConfig, OptimConfig
    from verl.workers.actor import DataParallelPPOActor
    from verl.workers.fsdp_utils import apply_fsdp2, build_lr_scheduler, build_optimizer

    init_single_rank(device)
    model = random_model(shape, device)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    dtype = torch.bfloat16 if device == "cuda" else None
    module = apply_fsdp2(model, device, 1, param_dtype=dtype)
    actor_cfg = ActorConfig(ppo_mini_batch_size=rows, ppo_micro_batch_size_per_gpu=micro, optim=OptimConfig(lr=1e-6))
    opt = build_optimizer(module, actor_cfg.optim)
    actor = DataParallelPPOActor(module, opt, build_lr_scheduler(opt, actor_cfg.optim, steps + 1), actor_cfg,
                                 device=torch.device(device, 0) if device == "cuda" else torch.device("cpu"))
    data = random_batch(rows, prompt_len, response_len, cfg.vocab_size)
    old, _ = actor.compute_log_prob(data, micro_batch_size=micro)
    data.batch["old_log_probs"] = old
    times, metrics = [], {}
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = actor.update_policy(data)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first update is a warm-up (allocator, kernels)
            times.append(time.perf_counter() - start)
    seq = prompt_len + response_len
    tokens = rows * seq
    secs = statistics.median(times)
    flops_per_token = 6.0 * n_params + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq
    tflops = flops_per_token * tokens / secs / 1e12
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = peak if peak is not None else (peak_tflops(name) if device == "cuda" else None)
    out = {
        "what": "actor update (DataParallelPPOActor.update_policy), FSDP2 1 rank, random init",
        "shape": shape, "params": n_params, "device": name, "device_type": device,
        "compute_dtype": "bf16" if dtype is not None else "fp32", "gradient_checkpointing": True,
        "rows": rows, "micro_batch": micro, "prompt_len": prompt_len, "response_len": response_len,
        "timed_updates": len(times), "update_s": secs, "update_s_all": times, "tokens_per_s": tokens / secs,
        "model_tflops_per_s": tflops, "peak_tflops": peak, "mfu": tflops / peak if peak else None,
        "grad_norm": float(metrics.get("actor/grad_norm", float("nan"))),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    import transformers

    out["transformers"] = transformers.__version__
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the figures")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--shape", default="qwen2.5-3b", choices=sorted(SHAPES))
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--micro", type=int, default=4, help="rows per forward/backward")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed updates after one warm-up")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --device cpu --shape tiny for a smoke run", file=sys.stderr)
        return 2
    fig = measure_update(a.shape, a.device, a.rows, a.micro, a.prompt_len, a.response_len, a.steps, a.peak_tflops)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(fig, indent=1) + "\n")
    mfu = f"{fig['mfu']:.1%}" if fig["mfu"] is not None else "n/a"
    print(f"gpu_check: {fig['shape']} update on {fig['device']}: {fig['tokens_per_s']:.0f} tokens/s, "
          f"{fig['model_tflops_per_s']:.1f} TFLOP/s, MFU {mfu} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
