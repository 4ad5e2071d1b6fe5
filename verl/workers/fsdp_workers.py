"""Ray-facing FSDP2 workers: ActorRolloutRefWorker (policy + reference + rollout engine) and CriticWorker.

Plain classes: `RayWorkerGroup` hosts one instance per rank. As in verl, one process holds the actor,
the reference model and the rollout engine of its rank (colocated), so weight sync is a local copy
of the gathered full state dict into the engine; the critic lives in a second group that may share
the same CPUs/GPUs. Device: `trainer.device` (`auto` -> cuda if available, else cpu); every other line
is the same on both. Torch threads per worker: `trainer.threads_per_worker`, or cores / workers.

The rollout engine is marked stale after every actor update and after a checkpoint load; `generate`
syncs a stale engine first, so rollouts never run on old weights even if the driver forgets
`sync_rollout_weights` (which it calls explicitly to time the sync). Both are collectives: call them on
every rank (never with `execute_rank0`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

import torch

from verl.protocol import DataProto
from verl.single_controller.dist import Worker, set_torch_threads
from verl.trainer.config import PPOConfig
from verl.utils import memory_usage
from verl.utils.faults import fault_point
from verl.utils.models import resolve_model_path
from verl.workers import checkpoint as ckpt
from verl.workers.actor import DataParallelPPOActor
from verl.workers.critic import DataParallelPPOCritic
from verl.workers.fsdp_utils import (
    apply_fsdp2,
    build_lr_scheduler,
    build_optimizer,
    compute_dtype,
    full_state_dict,
    load_hf_model,
)
from verl.workers.rollout.base import GenOutput, SamplingParams

logger = logging.getLogger(__name__)


def _total_steps(optim_steps: int, config: PPOConfig) -> int:
    return optim_steps if optim_steps > 0 else config.trainer.total_training_steps


class _FSDPWorker(Worker):
    def __init__(self, config: PPOConfig) -> None:
        super().__init__(config.trainer.device)
        self.config = config
        self.threads = set_torch_threads(config.trainer.threads_per_worker, config.trainer.n_gpus_per_node)
        torch.manual_seed(config.trainer.seed + self.rank)

    def _build(self, model_cfg, fsdp_cfg, *, value_model: bool = False, trainable: bool = True):
        module = load_hf_model(model_cfg.path, value_model=value_model, trust_remote_code=model_cfg.trust_remote_code,
                               gradient_checkpointing=trainable and model_cfg.enable_gradient_checkpointing)
        if not trainable:
            module.requires_grad_(False)
            module.eval()
        dtype = compute_dtype(getattr(fsdp_cfg, "param_dtype", "auto"), self.device_type)
        return apply_fsdp2(module, self.device_type, self.world_size,
                           reshard_after_forward=fsdp_cfg.reshard_after_forward,
                           param_offload=fsdp_cfg.param_offload, param_dtype=dtype)

    # ------------------------------------------------------------------ memory, per step (verl.utils.memory_usage)
    def reset_memory_peak(self) -> None:
        """Start a step's measurement: peak RSS of this process and of its children (the rollout engine's
        processes), and torch's CUDA peak."""
        memory_usage.reset_peaks(cuda=self.device_type == "cuda")

    def memory_peak(self) -> dict[str, float]:
        """GB since `reset_memory_peak`: rss, children_rss (and cuda_allocated / cuda_reserved on CUDA)."""
        return memory_usage.read_peaks(cuda=self.device_type == "cuda")


class ActorRolloutRefWorker(_FSDPWorker):
    """Policy (trained), reference (frozen, only if the config uses a KL) and rollout engine of one rank."""

    def __init__(self, config: PPOConfig) -> None:
        super().__init__(config)
        self.arr = config.actor_rollout_ref
        self.actor: DataParallelPPOActor | None = None
        self.ref: DataParallelPPOActor | None = None
        self.rollout = None
        self._rollout_stale = False

    def init_model(self, build_rollout: bool = True) -> None:
        arr, cfg = self.arr, self.config
        module = self._build(arr.model, arr.actor.fsdp_config)
        optimizer = build_optimizer(module, arr.actor.optim)
        scheduler = build_lr_scheduler(optimizer, arr.actor.optim, _total_steps(arr.actor.optim.total_training_steps,
                                                                                cfg))
        self.actor = DataParallelPPOActor(module, optimizer, scheduler, arr.actor, rollout_n=arr.rollout.n,
                                          device=self.device)
        if cfg.use_ref:
            ref_module = self._build(arr.model, arr.actor.fsdp_config, trainable=False)
            self.ref = DataParallelPPOActor(ref_module, None, None, arr.actor, rollout_n=arr.rollout.n,
                                            device=self.device)
        if build_rollout:
            from verl.workers.rollout import engine_from_config

            # the engine binds cores by the rank's place on its node (LOCAL_RANK of trainer.n_gpus_per_node)
            local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            self.rollout = engine_from_config(cfg, resolve_model_path(arr.model.path), device=self.device_type,
                                              seed=cfg.trainer.seed + self.rank, rank=local_rank,
                                              world_size=cfg.trainer.n_gpus_per_node, cpu_threads=self.threads)
            torch.set_num_threads(self.threads)  # an engine may have changed it
        logger.info("rank %d: actor%s%s ready on %s", self.rank, " + ref" if self.ref else "",
                    f" + {arr.rollout.name} rollout" if self.rollout else "", self.device)

    # ------------------------------------------------------------------ rollout
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenOutput]:
        """Token-id prompts -> len(prompts) * params.n outputs (prompt-major), on current weights.

        Call it on every rank (`dispatch_dp_list` does, with possibly empty lists): a stale engine is synced
        first, which is a collective."""
        if self.rollout is None:
            raise RuntimeError("no rollout engine: call init_model(build_rollout=True) first")
        if self._rollout_stale:
            self.sync_rollout_weights()
        if not prompts:
            return []
        return self.rollout.generate(prompts, params)

    def prepare_rollout(self) -> None:
        """Before single requests (the asynchronous rollout): refresh a stale engine. A collective: every rank."""
        if self.rollout is None:
            raise RuntimeError("no rollout engine: call init_model(build_rollout=True) first")
        if self._rollout_stale:
            self.sync_rollout_weights()

    def generate_one(self, prompt: list[int], params: SamplingParams) -> GenOutput:
        """One request on current weights; runs in one of the actor's request threads (`max_concurrency` > 1)
        while others wait on the engine. `prepare_rollout` must have run on every rank."""
        if self._rollout_stale:
            raise RuntimeError("the rollout engine holds stale weights: call prepare_rollout on every rank first")
        generate_one = getattr(self.rollout, "generate_one", None)
        if generate_one is None:
            raise RuntimeError(f"{type(self.rollout).__name__} takes batches only: "
                               "actor_rollout_ref.rollout.mode=async needs rollout.name=vllm")
        return generate_one(prompt, params)

    def sync_rollout_weights(self) -> float:
        """Gather the actor's full weights and load them into this rank's engine; returns seconds (collective)."""
        start = time.perf_counter()
        state = full_state_dict(self.actor.module, device="cpu" if self.device_type == "cpu" else self.device,
                                dtype=getattr(self.rollout, "dtype", None))
        if self.rollout is not None:
            self.rollout.update_weights(state)
        self._rollout_stale = False
        return time.perf_counter() - start

    # ------------------------------------------------------------------ log-probs and update
    def _temperature(self, data: DataProto) -> float:
        return float(data.meta_info.get("temperature", self.arr.rollout.temperature))

    def compute_log_prob(self, data: DataProto) -> DataProto:
        """DataProto{old_log_probs [B, R], entropys [B, R]} under the current policy."""
        r = self.arr.rollout
        log_probs, entropy = self.actor.compute_log_prob(
            data, r.log_prob_micro_batch_size_per_gpu, self._temperature(data), calculate_entropy=True,
            max_token_len=r.log_prob_max_token_len_per_gpu if r.log_prob_use_dynamic_bsz else 0)
        return DataProto.from_dict({"old_log_probs": log_probs, "entropys": entropy})

    def compute_ref_log_prob(self, data: DataProto) -> DataProto:
        """DataProto{ref_log_prob [B, R]} under the frozen reference model."""
        if self.ref is None:
            raise RuntimeError("no reference model: it is built only when actor.use_kl_loss or "
                               "algorithm.use_kl_in_reward is set")
        ref = self.arr.ref
        log_probs, _ = self.ref.compute_log_prob(
            data, ref.log_prob_micro_batch_size_per_gpu, self._temperature(data),
            max_token_len=ref.log_prob_max_token_len_per_gpu if ref.log_prob_use_dynamic_bsz else 0)
        return DataProto.from_dict({"ref_log_prob": log_probs})

    def update_actor(self, data: DataProto) -> dict[str, float]:
        data.meta_info.setdefault("temperature", self.arr.rollout.temperature)
        start = time.perf_counter()
        metrics = self.actor.update_policy(data)
        fault_point("update_actor", data.meta_info.get("global_steps"))
        metrics["perf/update_actor_s"] = time.perf_counter() - start
        self._rollout_stale = True
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: str, step: int) -> None:
        ckpt.save_sharded(directory, self.actor.module, self.actor.optimizer, self.actor.scheduler,
                          extra={"step": step, "updates": self.actor._updates})

    def load_checkpoint(self, directory: str) -> int:
        """Restore the actor; returns the saved step. The engine is refreshed before the next generate."""
        extra = ckpt.load_sharded(directory, self.actor.module, self.actor.optimizer, self.actor.scheduler)
        self.actor._updates = int(extra.get("updates", 0))
        self._rollout_stale = True
        return int(extra.get("step", 0))

    def save_hf_model(self, directory: str) -> str | None:
        """Rank 0 writes an HF directory of the current policy (collective gather on every rank)."""
        state = full_state_dict(self.actor.module)
        out = str(ckpt.save_hf(state, directory, self.arr.model.path)) if self.rank == 0 else None
        torch.distributed.barrier()
        return out

    def get_state_digest(self) -> dict[str, Any]:
        """sha256 and sum of the full actor weights (for tests: equal digests == equal parameters)."""
        return _digest(full_state_dict(self.actor.module))

    def close(self) -> None:
        if self.rollout is not None and hasattr(self.rollout, "close"):
            self.rollout.close()
        self.rollout = None


class CriticWorker(_FSDPWorker):
    """Value model (backbone + scalar head) of one rank."""

    def __init__(self, config: PPOConfig) -> None:
        super().__init__(config)
        self.critic: DataParallelPPOCritic | None = None

    def init_model(self) -> None:
        c, cfg = self.config.critic, self.config
        module = self._build(c.model, c.fsdp_config, value_model=True)
        optimizer = build_optimizer(module, c.optim)
        scheduler = build_lr_scheduler(optimizer, c.optim, _total_steps(c.optim.total_training_steps, cfg))
        mini = c.ppo_mini_batch_size or cfg.actor_rollout_ref.actor.ppo_mini_batch_size
        self.critic = DataParallelPPOCritic(module, optimizer, scheduler, c, ppo_mini_batch_size=mini,
                                            rollout_n=cfg.actor_rollout_ref.rollout.n, device=self.device)

    def compute_values(self, data: DataProto) -> DataProto:
        values = self.critic.compute_values(data, self.config.critic.ppo_micro_batch_size_per_gpu)
        return DataProto.from_dict({"values": values})

    def update_critic(self, data: DataProto) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.critic.update_critic(data)
        metrics["perf/update_critic_s"] = time.perf_counter() - start
        return metrics

    def save_checkpoint(self, directory: str, step: int) -> None:
        ckpt.save_sharded(directory, self.critic.module, self.critic.optimizer, self.critic.scheduler,
                          extra={"step": step, "updates": self.critic._updates})

    def load_checkpoint(self, directory: str) -> int:
        extra = ckpt.load_sharded(directory, self.critic.module, self.critic.optimizer, self.critic.scheduler)
        self.critic._updates = int(extra.get("updates", 0))
        return int(extra.get("step", 0))

    def get_state_digest(self) -> dict[str, Any]:
        return _digest(full_state_dict(self.critic.module))


def _digest(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    h = hashlib.sha256()
    total = 0.0
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        total += float(t.double().sum())
    return {"sha256": h.hexdigest(), "sum": total}
