"""The PPO-family training loop on a Ray single controller.

The driver holds the data, the rollout and reward functions and the algorithm math; worker groups hold
the models (FSDP2 actor + reference + rollout engine colocated in one process per rank; the critic in a
second group). One step is the list of named methods in `fit()`; each is timed as `timing_s/<name>`.

Departure from verl: when the update is on-policy (one epoch over one mini-batch, no KL in the reward) the
old-log-prob pass is skipped; the actor takes its own detached log-probs as the old ones (ratio 1, the same
gradient), which saves one forward pass over the batch per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from verl.protocol import DataProto
from verl.single_controller.ray_worker_group import reduce_metrics
from verl.trainer.config import PPOConfig
from verl.trainer.ppo import core_algos, validation
from verl.trainer.ppo.components import WorkerGroupEngine
from verl.trainer.ppo.metrics import aggregate_by_source, compute_data_metrics, compute_throughput_metrics
from verl.utils import checkpoint as ckpt
from verl.utils import memory_usage, progress
from verl.utils.dataset import BatchIterator, PromptDataset, prompt_options
from verl.utils.faults import fault_point
from verl.utils.plain import to_plain
from verl.utils.timing import timer
from verl.workers.rollout.base import SamplingParams

logger = logging.getLogger(__name__)

FORWARD_KEYS = ["input_ids", "attention_mask", "position_ids", "responses", "response_mask"]


def load_datasets(config: PPOConfig, tokenizer, dataset_check=None) -> tuple[PromptDataset, PromptDataset | None]:
    """The training and validation prompt datasets of `config` (no validation set without data.val_files)."""
    d = config.data
    common = dict(**prompt_options(d), check=dataset_check)
    train = PromptDataset(d.train_files, tokenizer, key="data.train_files", **common)
    val = (PromptDataset(d.val_files, tokenizer, key="data.val_files", max_samples=d.val_max_samples, **common)
           if d.val_files else None)
    return train, val


class RayPPOTrainer:
    def __init__(self, config: PPOConfig, tokenizer, actor_wg, critic_wg, rollout_fn, reward_fn, tracker=None,
                 dataset_check=None, memory_plan=None, datasets=None):
        self.cfg = config
        self.memory_plan = memory_plan  # verl.utils.memory_plan.MemoryPlan: logged beside the measured peaks
        self.tokenizer = tokenizer
        self.actor_wg = actor_wg
        self.critic_wg = critic_wg
        self.rollout_fn = rollout_fn
        self.reward_fn = reward_fn
        self.tracker = tracker
        self.engine = WorkerGroupEngine(actor_wg)
        d = config.data
        # (train, val) datasets: built by the caller before Ray starts (main_ppo.load_datasets), else here
        self.train_ds, self.val_ds = datasets or load_datasets(config, tokenizer, dataset_check)
        self.train_iter = BatchIterator(len(self.train_ds), d.train_batch_size, shuffle=d.shuffle, seed=d.seed)
        kc = config.algorithm.kl_ctrl
        self.kl_ctrl = core_algos.get_kl_controller(kc.type, kc.kl_coef, kc.target_kl, kc.horizon)
        self.global_step = 0
        self.val_history: list[dict] = []
        self.last_checkpoint: str | None = None
        self._last_save_time = time.monotonic()  # for trainer.save_interval_minutes

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        t = self.cfg.trainer
        self._maybe_resume()
        if t.resume_mode != "disable":  # records a killed session logged past its last checkpoint are redone
            unlogged = ckpt.mend_metrics(self.tracker, self.last_checkpoint, self.global_step)
            if unlogged is not None:  # saved, then killed before its validation and record: finish that step
                step = self.global_step
                if self.val_ds is not None and t.test_freq > 0 and (step % t.test_freq == 0 or
                                                                    step == t.total_training_steps):
                    unlogged.update(self.validate())
                self._log(unlogged, step)
        if t.val_before_train and self.val_ds is not None and (self.last_checkpoint is None or t.val_only):
            self._log(self.validate(), self.global_step)
            if t.val_only:
                return self._summary()
        while self.global_step < t.total_training_steps:
            self.global_step += 1
            step, m = self.global_step, {}
            self._reset_memory_peaks()
            with timer("step", m):
                batch = self._next_batch(m)
                with timer("gen", m):
                    batch = self._generate(batch, m)
                fault_point("rollout", step)
                with timer("reward", m):
                    self._compute_reward(batch, m)
                self._log_generations("train/generations", batch, t.log_train_generations)
                self._balance(batch)
                progress.begin("update")  # one console bar over log-probs, advantages, updates and weight sync
                if not self.cfg.on_policy_update:  # else the actor uses its own detached log-probs
                    with timer("old_log_prob", m):
                        self._compute_old_log_prob(batch, m)
                if self.cfg.use_ref:
                    with timer("ref", m):
                        self._compute_ref_log_prob(batch)
                if self.cfg.use_critic:
                    with timer("values", m):
                        self._compute_values(batch)
                with timer("adv", m):
                    self._compute_advantages(batch, m)
                if self.cfg.use_critic:
                    with timer("update_critic", m):
                        self._update_critic(batch, m)
                with timer("update_actor", m):
                    self._update_actor(batch, m)
                with timer("sync_weights", m):
                    self._sync_weights(m)
                progress.end("update")
            m.update(compute_data_metrics(batch, self.cfg.use_critic, self.cfg.data.max_response_length))
            m.update(compute_throughput_metrics(batch, m["timing_s/step"], self.cfg.world_size))
            last = step == t.total_training_steps
            if self._should_save(step, last):  # before validating: a failing validation loses no training
                with timer("save_checkpoint", m):
                    self.save_checkpoint(metrics=m)
                fault_point("after_save", step)
            if self.val_ds is not None and t.test_freq > 0 and (step % t.test_freq == 0 or last):
                with timer("testing", m):
                    m.update(self.validate())
            m.update(self._memory_metrics())
            self._log(m, step)
        return self._summary()

    # ------------------------------------------------------------------ steps
    def _next_batch(self, m: dict) -> DataProto:
        idx, epoch = self.train_iter.next()
        m["train/epoch"] = float(epoch)
        # which rows this step saw, as one number (resume tests compare it with an uninterrupted run)
        m["data/batch_digest"] = float(int(hashlib.md5(str(idx).encode()).hexdigest()[:12], 16))
        return self._make_batch(self.train_ds, idx)

    def _make_batch(self, ds: PromptDataset, idx: list[int]) -> DataProto:
        return validation.make_batch(ds, idx)

    def _sampling_params(self, validate: bool) -> SamplingParams:
        if validate:
            return validation.val_sampling_params(self.cfg)
        r = self.cfg.actor_rollout_ref.rollout
        return SamplingParams(n=1, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_tokens=self.cfg.data.max_response_length,
                              seed=self.cfg.trainer.seed + self.global_step)

    def _generate(self, batch: DataProto, m: dict, validate: bool = False) -> DataProto:
        r = self.cfg.actor_rollout_ref.rollout
        n = r.val_kwargs.n if validate else r.n
        bar = progress.phase("gen", len(batch) * n) if not validate else contextlib.nullcontext()
        with bar:  # rows finish as turns do
            out, extra = validation.generate(batch, self.rollout_fn, self.engine, self._sampling_params(validate), n,
                                             self.global_step, validate)
        m.update(extra)
        return out

    def _compute_reward(self, batch: DataProto, m: dict | None = None) -> list[dict]:
        per_sample = validation.score(batch, self.reward_fn)
        if m is not None and per_sample:
            for k in per_sample[0]:
                vals = [float(p[k]) for p in per_sample if isinstance(p.get(k), (int, float, bool))]
                if vals:
                    m[f"reward/{k}"] = float(np.mean(vals))
        return per_sample

    def _balance(self, batch: DataProto) -> None:
        """Reorder rows so every worker gets a similar number of tokens (verl's seqlen balancing)."""
        ws = self.cfg.world_size
        if not self.cfg.trainer.balance_batch or ws <= 1 or len(batch) % ws:
            return
        lengths = batch.batch["attention_mask"].sum(-1).tolist()
        order = sorted(range(len(batch)), key=lambda i: -lengths[i])
        per = len(batch) // ws
        parts, loads = [[] for _ in range(ws)], [0] * ws
        for i in order:
            cands = [p for p in range(ws) if len(parts[p]) < per]
            p = min(cands, key=lambda q: loads[q])
            parts[p].append(i)
            loads[p] += lengths[i]
        idx = [i for part in parts for i in part]
        batch.reorder(torch.tensor(idx))

    def _forward_data(self, batch: DataProto, extra: list[str] = ()) -> DataProto:
        data = batch.select(batch_keys=FORWARD_KEYS + [k for k in extra if k in batch.batch])
        data.meta_info["temperature"] = self.cfg.actor_rollout_ref.rollout.temperature
        data.meta_info["global_steps"] = self.global_step  # verl's key
        return data

    def _compute_old_log_prob(self, batch: DataProto, m: dict) -> None:
        out = self.actor_wg.dispatch_dp("compute_log_prob", self._forward_data(batch))
        batch.batch["old_log_probs"] = out.batch["old_log_probs"]
        ent = out.batch.get("entropys")
        if ent is not None:
            m["actor/entropy"] = core_algos.masked_mean(ent, batch.batch["response_mask"]).item()

    def _compute_ref_log_prob(self, batch: DataProto) -> None:
        out = self.actor_wg.dispatch_dp("compute_ref_log_prob", self._forward_data(batch))
        batch.batch["ref_log_prob"] = out.batch["ref_log_prob"]

    def _compute_values(self, batch: DataProto) -> None:
        out = self.critic_wg.dispatch_dp("compute_values", self._forward_data(batch))
        batch.batch["values"] = out.batch["values"]

    def _compute_advantages(self, batch: DataProto, m: dict) -> None:
        a = self.cfg.algorithm
        t = batch.batch
        if a.use_kl_in_reward:
            rewards, kl_m = core_algos.apply_kl_penalty(t["token_level_scores"], t["old_log_probs"],
                                                         t["ref_log_prob"], t["response_mask"], self.kl_ctrl,
                                                         a.kl_penalty)
            t["token_level_rewards"] = rewards
            m.update(kl_m)
        else:
            t["token_level_rewards"] = t["token_level_scores"]
        est = core_algos.get_adv_estimator(a.adv_estimator)
        adv, ret = est(t["token_level_rewards"], t["response_mask"], t.get("values"),
                       batch.non_tensor_batch["uid"], a.gamma, a.lam, a.norm_adv_by_std_in_grpo, 1e-6)
        t["advantages"], t["returns"] = adv, ret

    def _update_critic(self, batch: DataProto, m: dict) -> None:
        data = self._forward_data(batch, ["values", "returns"])
        m.update(reduce_metrics(self.critic_wg.dispatch_dp_exact("update_critic", data)))

    def _update_actor(self, batch: DataProto, m: dict) -> None:
        data = self._forward_data(batch, ["old_log_probs", "advantages", "ref_log_prob"])
        m.update(reduce_metrics(self.actor_wg.dispatch_dp_exact("update_actor", data)))

    def _sync_weights(self, m: dict) -> None:
        secs = self.actor_wg.execute_all("sync_rollout_weights")
        m["perf/weight_sync_s"] = float(max(secs)) if secs else 0.0

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Score every validation row (no partial batch dropped); per-source means as val/<source>/<metric>."""
        ds = self.val_ds
        bs = self.cfg.data.val_batch_size or len(ds)
        it = BatchIterator(len(ds), bs, shuffle=False, drop_last=False)
        per_sample, sources, records, gen_m = [], [], [], {}
        progress.begin("val", len(ds) * self.cfg.actor_rollout_ref.rollout.val_kwargs.n)
        for idx in it.epoch_batches():
            out = self._generate(self._make_batch(ds, idx), gen_m, validate=True)
            per = self._compute_reward(out)
            per_sample.extend(per)
            sources.extend(out.non_tensor_batch["data_source"].tolist())
            records.extend(self._records(out, self.cfg.trainer.log_val_generations - len(records)))
        progress.end("val")
        fault_point("validate", self.global_step)
        metrics = aggregate_by_source(per_sample, sources, prefix="val")
        metrics.update({f"val/{k}": v for k, v in gen_m.items() if k.startswith(("env/", "search/"))})
        self.val_history.append({"step": self.global_step, **metrics})
        if self.tracker is not None:
            self.tracker.log_table("val/generations", records, self.global_step)
        return metrics

    RECORD_KEYS = ("data_source", "question", "golden_answers", "response_text", "score", "search_queries",
                   "num_searches", "stop_reason")

    def _records(self, batch: DataProto, k: int) -> list[dict]:
        nt = batch.non_tensor_batch
        keys = [key for key in self.RECORD_KEYS if key in nt]
        return [{key: to_plain(nt[key][i]) for key in keys} for i in range(min(max(k, 0), len(batch)))]

    def _log_generations(self, name: str, batch: DataProto, k: int) -> None:
        if self.tracker is not None and k > 0:
            self.tracker.log_table(name, self._records(batch, k), self.global_step)

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_root(self) -> Path:
        return Path(self.cfg.trainer.default_local_dir)

    def _should_save(self, step: int, last: bool) -> bool:
        t = self.cfg.trainer
        return ckpt.save_due(step, last, t.save_freq, t.save_interval_minutes, time.monotonic() - self._last_save_time)

    def save_checkpoint(self, metrics: dict | None = None) -> str:
        d = ckpt.step_dir(self._ckpt_root(), self.global_step)
        self.actor_wg.execute_all("save_checkpoint", str(d / "actor"), self.global_step)
        if self.critic_wg is not None:
            self.critic_wg.execute_all("save_checkpoint", str(d / "critic"), self.global_step)
        self.actor_wg.execute_all("save_hf_model", str(d / "huggingface"))
        state = {"global_step": self.global_step, "dataloader": self.train_iter.state_dict(),
                 "kl_coef": float(self.kl_ctrl.value), "metrics": dict(metrics or {})}  # logged if a kill follows
        ckpt.mark_complete(self._ckpt_root(), self.global_step, state)
        ckpt.prune(self._ckpt_root(), self.cfg.trainer.max_actor_ckpt_to_keep)
        self.last_checkpoint = str(d)
        self._last_save_time = time.monotonic()
        logger.info("checkpoint saved: %s", d)
        return str(d)

    def _maybe_resume(self) -> None:
        t = self.cfg.trainer
        d = ckpt.resolve_resume(self._ckpt_root(), t.resume_mode, t.resume_from_path)
        if d is None:
            return
        import json

        state = json.loads((d / "trainer_state.json").read_text())
        self.actor_wg.execute_all("load_checkpoint", str(d / "actor"))
        if self.critic_wg is not None:
            self.critic_wg.execute_all("load_checkpoint", str(d / "critic"))
        self.actor_wg.execute_all("sync_rollout_weights")
        self.train_iter.load_state_dict(state["dataloader"])
        self.global_step = int(state["global_step"])
        if hasattr(self.kl_ctrl, "value"):
            self.kl_ctrl.value = float(state.get("kl_coef", self.kl_ctrl.value))
        self.last_checkpoint = str(d)
        logger.info("resumed from %s at step %d", d, self.global_step)

    # ------------------------------------------------------------------ memory, per step
    def _reset_memory_peaks(self) -> None:
        memory_usage.reset_peaks(children=False)  # the driver's children are Ray's daemons and workers
        for wg in (self.actor_wg, self.critic_wg):
            if wg is not None:
                wg.execute_all("reset_memory_peak")

    def _memory_metrics(self) -> dict[str, float]:
        """perf/max_memory_rss_gb/<process> measured this step, perf/max_memory_planned_gb/<process> planned."""
        critic = self.critic_wg.execute_all("memory_peak") if self.critic_wg is not None else None
        planned = self.memory_plan.metrics() if self.memory_plan is not None else None
        driver = memory_usage.read_peaks(children=False)
        return memory_usage.step_metrics(driver, self.actor_wg.execute_all("memory_peak"), critic, planned,
                                         single_node=self.cfg.trainer.nnodes == 1)

    # ------------------------------------------------------------------ logging
    def _log(self, m: dict, step: int) -> None:
        bad = [k for k, v in m.items() if isinstance(v, float) and not np.isfinite(v)]
        if bad:
            logger.warning("non-finite metrics at step %d: %s", step, bad)
        if self.tracker is not None:
            self.tracker.log(m, step)

    def _summary(self) -> dict:
        return {"global_step": self.global_step, "val_history": self.val_history,
                "last_checkpoint": self.last_checkpoint, "time": time.time()}
