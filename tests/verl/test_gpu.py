"""GPU path: the same code with device=cuda, NCCL and the CUDA vLLM build. Skipped without CUDA.

Run on a GPU machine with `pytest -m gpu` (needs >= 2 GPUs for the NCCL test and the `gpu` extra).
"""

import sys

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_nccl_all_reduce_across_two_gpu_workers():
    import ray

    from verl.single_controller import RayWorkerGroup, Worker

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")

    class Summer(Worker):
        def __init__(self):
            super().__init__("cuda")

        def backend(self):
            import torch.distributed as dist

            return dist.get_backend()

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_gpus=2, include_dashboard=False)
    try:
        wg = RayWorkerGroup(Summer, 2, device="cuda", name="gpu_summer")
        assert wg.execute_all("backend") == ["nccl", "nccl"]
        assert wg.execute_all("all_reduce_sum", 1.5) == [3.0, 3.0]
        wg.shutdown()
    finally:
        ray.shutdown()


def test_cuda_vllm_generates_and_reloads_weights(embedded_model_path):
    from transformers import AutoModelForCausalLM

    from verl.workers.rollout import build_rollout_engine
    from verl.workers.rollout.base import SamplingParams

    engine = build_rollout_engine("vllm", embedded_model_path, device="cuda", max_model_len=512)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=8)
        before = engine.generate([[1, 2, 3, 4]], params)[0].token_ids
        sd = AutoModelForCausalLM.from_pretrained(embedded_model_path).state_dict()
        sd = {k: v + 0.05 * torch.randn_like(v) for k, v in sd.items()}
        engine.update_weights(sd)
        assert engine.generate([[1, 2, 3, 4]], params)[0].token_ids != before
    finally:
        engine.close()
