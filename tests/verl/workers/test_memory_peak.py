"""The memory plan holds for the actor worker: the peak RSS of a real actor update in fp32 stays within the plan.

One ActorRolloutRefWorker in a Ray worker group (FSDP2 on gloo, one rank, the embedded SmolLM2-135M) runs the plan's
peak-memory micro-batch: a token budget of 1024 tokens filled by 4 full rows of 64 + 192 tokens, forward + backward of
the actor loss through `DataParallelPPOActor.update_policy` with the chunked log-prob head on, in fp32 whatever the
host (fp32 is the worst case: an AMD EPYC without avx512_bf16 computes in it; a Xeon with AMX would choose bf16).
The worker's own per-step measurement (`reset_memory_peak` / `memory_peak`, the kernel's VmHWM) of the second update
(gradients and AdamW states allocated) must be within 10% above the plan's actor process peak, and the plan no looser
than 1.6x the measurement.
"""

from __future__ import annotations

import pytest
import ray
import torch

from verl.protocol import DataProto
from verl.single_controller import RayWorkerGroup
from verl.trainer.config import load_config
from verl.utils.memory_fit import plan_config
from verl.utils.memory_plan import GB, RUNTIME, model_dims
from verl.workers.fsdp_workers import ActorRolloutRefWorker

PROMPT, RESP, ROWS = 64, 192, 4
pytestmark = pytest.mark.slow


def _config():
    return load_config({
        "data": {"max_prompt_length": PROMPT, "max_response_length": RESP, "train_batch_size": ROWS // 2},
        "actor_rollout_ref": {
            "actor": {"ppo_mini_batch_size": ROWS // 2, "use_dynamic_bsz": True,
                      "ppo_max_token_len_per_gpu": ROWS * (PROMPT + RESP), "entropy_from_logits_with_chunking": True,
                      "fsdp_config": {"param_dtype": "fp32"}, "optim": {"lr": 1e-7}},
            "rollout": {"n": 2}},
        "trainer": {"device": "cpu", "n_gpus_per_node": 1, "threads_per_worker": 2}})


def _full_rows(seed: int) -> DataProto:
    """ROWS rows without padding: every micro-batch of the budget is 4 x 256 tokens, 768 of them scored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 40000, (ROWS, PROMPT + RESP), generator=g)
    mask = torch.ones_like(ids)
    return DataProto.from_dict({
        "input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1, "responses": ids[:, PROMPT:],
        "response_mask": mask[:, PROMPT:], "advantages": torch.randn(ROWS, RESP, generator=g)},
        meta_info={"temperature": 1.0})


def test_fp32_update_peak_is_within_the_plan():
    cfg = _config()
    actor = plan_config(cfg, "cpu", model_dims("embedded")).get("actor")
    assert any(k.startswith("update/") for k in actor.parts)  # the update is the peak phase
    assert actor.parts["update/activations"] == ROWS * (PROMPT + RESP) * model_dims("embedded").act_token(4, False)
    planned = actor.host - RUNTIME["vllm_client"]  # this worker builds no rollout engine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        wg = RayWorkerGroup(ActorRolloutRefWorker, 1, init_args=(cfg,), device="cpu", name="memory_peak")
        try:
            wg.execute_all("init_model", build_rollout=False)
            wg.dispatch_dp_exact("update_actor", _full_rows(0))  # allocates the AdamW states
            wg.execute_all("reset_memory_peak")
            wg.dispatch_dp_exact("update_actor", _full_rows(1))
            (peak,) = wg.execute_all("memory_peak")
        finally:
            wg.shutdown()
    finally:
        ray.shutdown()
    measured = peak["rss"] * GB
    assert peak["children_rss"] == 0.0  # no engine processes
    assert measured <= 1.10 * planned, f"measured {measured / GB:.2f} GB > 1.1 x planned {planned / GB:.2f} GB"
    assert planned <= 1.6 * measured, f"planned {planned / GB:.2f} GB > 1.6 x measured {measured / GB:.2f} GB"
