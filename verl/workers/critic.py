"""Data-parallel PPO critic: token values of the responses and the clipped value update on one FSDP rank.

The value model is the policy's transformer backbone with a scalar head: `AutoModelForTokenClassification`
with `num_labels=1` (a Linear(hidden, 1) named `score`, initialised with std = initializer_range, 0.02 for
the embedded model). The value of response token t is read at the position that predicts it (P-1+t), as
in verl. Micro-batch loss scaling is exact and micro-batches group rows by length, as in the actor (see
`verl.workers.actor`).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn

from verl.protocol import DataProto
from verl.trainer.config import CriticConfig
from verl.trainer.ppo import core_algos
from verl.workers.actor import (
    dist_world_size,
    micro_batches,
    micro_scales,
    minibatches,
    model_inputs,
    response_mask_of,
    unsort_rows,
)
from verl.workers.fsdp_utils import clip_grad_norm, trim_padding

logger = logging.getLogger(__name__)


class DataParallelPPOCritic:
    """PPO critic on one rank. `ppo_mini_batch_size` is in prompts (x `rollout_n` rows)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, cfg: CriticConfig, *,
                 ppo_mini_batch_size: int, rollout_n: int = 1, device: torch.device | str = "cpu") -> None:
        self.module, self.optimizer, self.scheduler, self.cfg = module, optimizer, scheduler, cfg
        self.ppo_mini_batch_size, self.rollout_n = ppo_mini_batch_size, rollout_n
        self.device = torch.device(device)
        self._updates = 0

    def _forward(self, micro: DataProto) -> torch.Tensor:
        """Values [b, R] (0 on trimmed right padding)."""
        b = micro.batch
        R = b["responses"].shape[1]
        ids, mask, pos, kept = trim_padding(*model_inputs(b, self.device), R)
        out = self.module(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        values = out.logits[:, -kept - 1:-1, 0].float()  # [b, kept]
        if kept < R:
            values = nn.functional.pad(values, (0, R - kept))
        return values

    @torch.no_grad()
    def compute_values(self, data: DataProto, micro_batch_size: int) -> torch.Tensor:
        """Values [B, R], zeroed outside response_mask."""
        if micro_batch_size < 1:
            raise ValueError(f"critic.ppo_micro_batch_size_per_gpu must be >= 1, got {micro_batch_size}")
        micros, order = micro_batches(data, micro_batch_size, self.cfg.group_by_length, self.cfg.token_budget,
                                      self.device)
        values = unsort_rows(torch.cat([self._forward(m) for m in micros]).cpu(), order)
        return values * response_mask_of(data).to(values.dtype)

    def update_critic(self, data: DataProto) -> dict[str, float]:
        """ppo_epochs passes of clipped value-loss mini-batch steps; returns this rank's metrics."""
        cfg = self.cfg
        mini_size = self.ppo_mini_batch_size * self.rollout_n // dist_world_size()
        self.module.train()
        sums: dict[str, float] = defaultdict(float)
        grad_norms: list[float] = []
        n_mini = 0
        mask_key = "response_mask" if "response_mask" in data.batch else "attention_mask"
        for mini in minibatches(data, mini_size, cfg.ppo_epochs, False, seed=self._updates,
                                key="critic.ppo_mini_batch_size"):
            scaled = micro_scales(mini, cfg.ppo_micro_batch_size_per_gpu, cfg.loss_agg_mode, mask_key, self.device,
                                  by_length=cfg.group_by_length, max_tokens=cfg.token_budget)
            for i, (micro, scale, token_scale) in enumerate(scaled):
                if hasattr(self.module, "set_requires_gradient_sync"):
                    self.module.set_requires_gradient_sync(i == len(scaled) - 1)
                mask = response_mask_of(micro).to(self.device)
                vpreds = self._forward(micro)
                vf_loss, clipfrac = core_algos.compute_value_loss(
                    vpreds, micro.batch["returns"].to(self.device), micro.batch["values"].to(self.device), mask,
                    cfg.cliprange_value, cfg.loss_agg_mode)
                (vf_loss * scale).backward()
                sums["critic/vf_loss"] += vf_loss.item() * scale
                sums["critic/vf_clipfrac"] += clipfrac.item() * token_scale
                sums["critic/vpred_mean"] += core_algos.masked_mean(vpreds.detach(), mask).item() * token_scale
            grad_norm = clip_grad_norm(self.module, cfg.grad_clip)
            if torch.isfinite(torch.tensor(grad_norm)):
                self.optimizer.step()
            else:
                logger.warning("critic grad norm is %s: skipping this optimizer step", grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
            grad_norms.append(grad_norm)
            n_mini += 1
        out = {k: v / n_mini for k, v in sums.items()}
        out["critic/grad_norm"] = sum(grad_norms) / len(grad_norms)
        if self.scheduler is not None:
            out["critic/lr"] = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
        self._updates += 1
        return out
