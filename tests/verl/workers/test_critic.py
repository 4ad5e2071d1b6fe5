"""CriticWorker (embedded backbone + scalar value head, FSDP2 on a 1-rank gloo group) in this process."""

from __future__ import annotations

import pytest
import torch

from verl.protocol import DataProto
from verl.trainer.config import OptimConfig, PPOConfig
from verl.workers.fsdp_workers import CriticWorker

P, R, B = 16, 16, 4


def make_batch(seed: int = 0) -> DataProto:
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, 5000, (B, P), generator=g)
    responses = torch.randint(10, 5000, (B, R), generator=g)
    attn = torch.ones(B, P + R, dtype=torch.long)
    attn[1, :4] = 0
    attn[2, P + 6:] = 0
    attn[3, P + 12:] = 0
    response_mask = attn[:, P:].clone()
    response_mask[0, 3:8] = 0  # observation tokens
    return DataProto.from_dict({
        "responses": responses, "input_ids": torch.cat([prompts, responses], 1), "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0), "response_mask": response_mask,
        "returns": torch.linspace(-1, 1, R).expand(B, R) * response_mask,
    })


@pytest.mark.slow
def test_critic_worker_values_update_and_checkpoint(embedded_model_path, tmp_path) -> None:
    """CriticWorker in this process (1-rank gloo group): values, a learning update, a checkpoint roundtrip."""
    cfg = PPOConfig()
    cfg.trainer.device, cfg.trainer.n_gpus_per_node, cfg.trainer.threads_per_worker = "cpu", 1, 1
    cfg.critic.model.path = embedded_model_path
    cfg.critic.optim = OptimConfig(lr=1e-5)
    cfg.critic.ppo_micro_batch_size_per_gpu, cfg.critic.cliprange_value = 2, 100.0
    cfg.actor_rollout_ref.actor.ppo_mini_batch_size, cfg.actor_rollout_ref.rollout.n = B, 1
    worker = CriticWorker(cfg)
    worker.init_model()
    assert tuple(worker.critic.module.score.weight.shape) == (1, 576)  # the scalar head Linear(hidden, 1)
    data = make_batch()
    values = worker.compute_values(data).batch["values"]
    assert values.shape == (B, R) and torch.isfinite(values).all()
    assert (values[data.batch["response_mask"] == 0] == 0).all()
    assert values[data.batch["response_mask"] == 1].abs().max() < 20  # a small head on a normalised hidden state

    worker.save_checkpoint(str(tmp_path / "critic"), 1)
    saved = worker.get_state_digest()
    losses = []
    for _ in range(3):
        data.batch["values"] = worker.compute_values(data).batch["values"]
        metrics = worker.update_critic(data)
        losses.append(metrics["critic/vf_loss"])
    expected = {"critic/vf_loss", "critic/vf_clipfrac", "critic/vpred_mean", "critic/grad_norm", "critic/lr"}
    assert expected <= set(metrics)
    assert losses[-1] < losses[0]
    assert worker.get_state_digest() != saved
    assert worker.load_checkpoint(str(tmp_path / "critic")) == 1
    assert worker.get_state_digest() == saved
