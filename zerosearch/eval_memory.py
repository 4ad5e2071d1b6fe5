"""The memory plan of an evaluation or inference process, before any model loads (`verl.utils.memory_plan`'s formulas).

One process plays the questions: the driver (tokenizer, data, search backend), the policy engine (vLLM on CPU: its
EngineCore and worker processes with weights, repacked weights and `actor_rollout_ref.rollout.kv_cache_space_gb` of
KV cache; HF: the weights and the KV cache of one batch of `BATCH_SIZE x N` rows) and, with `SEARCH_ENGINE
simulate_*` and no server answering, the simulation server this command starts. On CPU the sum must fit in the
RAM that other processes leave free now; otherwise the command stops before loading anything and names the keys to
lower. On CUDA the engine takes `gpu_memory_utilization` of the GPU and the host side is small: no check.
"""

from __future__ import annotations

import logging

from zerosearch.eval_setup import Setup, UsageError

logger = logging.getLogger(__name__)


def planned_bytes(setup: Setup, batch_size: int) -> dict[str, float]:
    """The processes' planned peak RSS (bytes) by name; {} when the model's config.json is not readable here."""
    from verl.utils.memory_plan import RUNTIME, hf_generate_bytes, model_dims, vllm_engine_bytes, vllm_server_bytes

    dims = model_dims(setup.model_dir)
    if dims is None:
        return {}
    cfg = setup.cfg
    r = cfg.actor_rollout_ref.rollout
    w = 2 if r.dtype in ("bf16", "bfloat16", "fp16", "float16") else 4
    seq, prompt = cfg.data.max_prompt_length + cfg.data.max_response_length, cfg.data.max_prompt_length
    plan = {"driver": RUNTIME["driver"]}
    if r.name == "vllm":
        plan["driver"] += RUNTIME["vllm_client"]
        plan.update({f"vllm {k}": v for k, v in vllm_engine_bytes(dims, w=w, kv_gb=r.kv_cache_space_gb,
                                                                  max_num_seqs=r.max_num_seqs).items()})
    else:
        plan["hf engine"] = w * dims.params() + hf_generate_bytes(dims, w=w, rows=batch_size * setup.n, seq=seq,
                                                                  prompt=prompt)
    if setup.engine.startswith("simulate_") and _server_to_start(setup):
        sim = model_dims(_sim_dir(setup.values["SIMULATION_LLM"]))
        if sim is not None:
            from zerosearch.launch import SERVER_KV_GIB

            plan["simulation server"] = vllm_server_bytes(sim, w=4, kv_gb=SERVER_KV_GIB)
    return plan


def _sim_dir(name: str) -> str:
    from verl.utils.models import resolve_model_path

    return resolve_model_path(name)


def _server_to_start(setup: Setup) -> bool:
    from zerosearch.launch import _local_model, simulator_answers

    return not simulator_answers(setup.values) and _local_model(setup.values["SIMULATION_LLM"])


def check_memory(setup: Setup, batch_size: int) -> dict[str, float]:
    """Plan, log the plan, and refuse (UsageError naming the keys) when it cannot fit on this CPU machine."""
    from verl.utils.memory_plan import GB
    from verl.utils.memory_usage import machine_ram, ram_in_use_by_others

    plan = planned_bytes(setup, batch_size)
    if not plan or setup.device == "cuda":
        return plan
    total = sum(plan.values())
    free = machine_ram() - ram_in_use_by_others()
    text = " + ".join(f"{k} {v / GB:.2f}" for k, v in plan.items()) + f" = {total / GB:.2f} GB"
    logger.info("memory plan: %s, of %.2f GB free", text, free / GB)
    if total > free:
        r = setup.cfg.actor_rollout_ref.rollout
        fixes = (f"lower actor_rollout_ref.rollout.kv_cache_space_gb (now {r.kv_cache_space_gb:g}) or use ROLLOUT hf"
                 if r.name == "vllm" else f"lower BATCH_SIZE (now {batch_size})")
        raise UsageError(f"memory plan: {text} does not fit in the {free / GB:.2f} GB free on this machine; {fixes}, "
                         "or stop other jobs")
    return plan
