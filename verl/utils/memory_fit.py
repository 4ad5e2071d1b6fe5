"""The memory plan at start-up: plan a PPOConfig on this machine, adjust it to fit, or refuse it.

`apply_memory_plan(cfg, device)` runs in `main_ppo.run()` before Ray or any model starts. It plans every process
of one machine (`plan_config`, formulas in `verl.utils.memory_plan`) and compares the sum with what the machine
allows: `trainer.memory_limit_gb` if set, else the RAM (the cgroup limit if lower) times Ray's kill threshold
(env RAY_memory_usage_threshold, default 0.95; 1.0 when RAY_memory_monitor_refresh_ms=0 disables the monitor), of
which the RAM that other processes use now is taken off (Ray's monitor counts the whole machine; the launcher's
simulation server is counted once, as `trainer.colocated_server_gb`); on CUDA also each GPU's memory.
`trainer.memory_plan` decides what happens when it does not fit:
- `auto` (default): token-budget micro-batches (use_dynamic_bsz on, ppo_max_token_len_per_gpu and the log-prob
  budgets lowered, never below one longest row) and/or gradient checkpointing that fit are written into the config
  and named in one INFO line; when nothing fits, a ConfigError names the keys to lower and by how much;
- `strict`: a ConfigError that says what `auto` would set and what else would fit;
- `off`: no plan.
Choice in `auto`: the configured checkpointing is kept when its largest fitting update budget holds at least two
full rows (or all that was configured); otherwise checkpointing is turned on (it never turns it off).
"""

from __future__ import annotations

import copy
import logging

from verl.trainer.config import ConfigError, PPOConfig
from verl.utils.console import SHOW
from verl.utils.memory_plan import (
    GB,
    RUNTIME,
    Budget,
    Head,
    MemoryPlan,
    ModelDims,
    ProcessPlan,
    forward_bytes,
    hf_generate_bytes,
    micro_pass,
    model_dims,
    peak_of,
    update_bytes,
    vllm_engine_bytes,
)
from verl.utils.memory_usage import machine_budget, machine_ram

logger = logging.getLogger(__name__)
MODES = ("auto", "strict", "off")
A, R = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout."
UPDATE_KEYS = (A + "use_dynamic_bsz", A + "ppo_max_token_len_per_gpu")
LOGPROB_KEYS = (R + "log_prob_use_dynamic_bsz", R + "log_prob_max_token_len_per_gpu")
REF_KEYS = ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu")
CRITIC_KEYS = ("critic.use_dynamic_bsz", "critic.ppo_max_token_len_per_gpu")
CKPT_KEYS = ("actor_rollout_ref.model.enable_gradient_checkpointing", "critic.model.enable_gradient_checkpointing")


def _bytes(dtype: str, device: str) -> int:
    """Compute bytes of fsdp_config.param_dtype / rollout.dtype: auto is bf16 on CUDA, fp32 on CPU."""
    if dtype == "auto":
        return 2 if device == "cuda" else 4
    return 4 if dtype in ("fp32", "float32") else 2


def plan_config(cfg: PPOConfig, device: str, d: ModelDims, budget: Budget = Budget()) -> MemoryPlan:
    """Every process of one machine for `cfg` (see the formulas in verl.utils.memory_plan)."""
    arr, t, data = cfg.actor_rollout_ref, cfg.trainer, cfg.data
    a, r, fsdp = arr.actor, arr.rollout, arr.actor.fsdp_config
    gpu = device == "cuda"
    seq, resp, n, per_node = data.max_prompt_length + data.max_response_length, data.max_response_length, \
        cfg.world_size, t.n_gpus_per_node
    w, wr, P = _bytes(fsdp.param_dtype, device), _bytes(r.dtype, device), d.params()
    rows = data.train_batch_size * r.n // n  # rows per rank per step
    head = Head(a.entropy_from_logits_with_chunking, a.logits_chunk_size, a.entropy_checkpointing)

    def budget_of(dynamic: bool | None, tokens: int | None, micro_rows: int, cap: int):
        return micro_pass(seq, resp, rows=micro_rows, budget=(tokens or 0) if dynamic else 0, cap_rows=cap)

    mini = a.ppo_mini_batch_size * r.n // n
    upd = budget_of(a.use_dynamic_bsz, a.ppo_max_token_len_per_gpu, a.ppo_micro_batch_size_per_gpu, mini)
    offload = gpu and fsdp.param_offload  # FSDP2's CPU offload: parameters, gradients and Adam states on the host
    states = {"params+grads 8P/N": 8.0 * P / n, "adam 8P/N": 8.0 * P / n}
    if cfg.use_ref:
        states["reference 4P/N"] = 4.0 * P / n
    host_states = dict(states) if offload else {}
    base = {k: v for k, v in states.items() if k not in host_states}
    host = RUNTIME["worker"] + (RUNTIME["vllm_client"] if r.name == "vllm" else 0.0) + sum(host_states.values())
    # weight sync: the gathered state dict (w_r P, on the device), written to safetensors for vLLM (a host copy and
    # its serialisation buffer); a checkpoint's HF export: the fp32 state dict on the host and its buffer (8 P)
    to_host = {"sync": ("to vLLM 2w_rP", 2.0 * wr * P if r.name == "vllm" else 0.0),
               "save": ("hf export 8P", 8.0 * P if t.save_freq > 0 else 0.0)}
    phases = {"update": update_bytes(d, upd, w=w, ckpt=arr.model.enable_gradient_checkpointing, head=head,
                                     accum=mini * seq > upd.tokens),
              "optimizer": {"step 4P/N": 4.0 * P / n}}
    if gpu:
        base["cuda context"] = RUNTIME["cuda_context"]
        phases["sync"] = {"state dict w_rP": wr * P}
        host += max(v for _, v in to_host.values())
    else:
        base["runtime"], host = host, 0.0
        phases.update({phase: {k: v} for phase, (k, v) in to_host.items() if v})
        phases.setdefault("sync", {"state dict w_rP": wr * P})  # the HF engine loads it in place
    if not cfg.on_policy_update:
        lp = budget_of(r.log_prob_use_dynamic_bsz, r.log_prob_max_token_len_per_gpu,
                       r.log_prob_micro_batch_size_per_gpu, rows)
        phases["log_prob"] = forward_bytes(d, lp, w=w, head=head)
    if cfg.use_ref:
        ref = arr.ref
        rp = budget_of(ref.log_prob_use_dynamic_bsz, ref.log_prob_max_token_len_per_gpu,
                       ref.log_prob_micro_batch_size_per_gpu, rows)
        phases["ref"] = forward_bytes(d, rp, w=w, head=head)
    if r.name == "hf":
        base["hf engine weights"] = wr * P
        phases["generate"] = {"kv + prefill": hf_generate_bytes(d, w=wr, rows=r.max_num_seqs, seq=seq,  # validation
                                                                prompt=data.max_prompt_length)}  # fills a batch
    procs = [ProcessPlan("driver", 1, RUNTIME["driver"]), ProcessPlan("ray", 1, RUNTIME["ray"], file=0.0),
             peak_of("actor", per_node, base, phases, on_gpu=gpu, host_extra=host)]
    if r.name == "vllm":
        if gpu:
            procs.append(ProcessPlan("rollout", per_node, RUNTIME["vllm_engine_core"] + RUNTIME["vllm_worker"],
                                     r.gpu_memory_utilization * budget.gpu + RUNTIME["cuda_context"],
                                     file=2 * RUNTIME["file_backed"]))
        else:
            eng = vllm_engine_bytes(d, w=wr, kv_gb=r.kv_cache_space_gb, max_num_seqs=r.max_num_seqs)
            # two processes; the reloaded weight file is mapped during a sync (w_r P of page cache)
            procs.append(ProcessPlan("rollout", per_node, sum(eng.values()), 0.0, eng,
                                     file=2 * RUNTIME["file_backed"] + wr * P))
    if cfg.use_critic:
        procs.append(_critic_plan(cfg, device, d, seq, resp, per_node))
    if t.colocated_server_gb > 0:
        procs.append(ProcessPlan("server", 1, t.colocated_server_gb * GB, file=3 * RUNTIME["file_backed"]))
    return MemoryPlan(procs, budget.host, budget.source, budget.gpu if gpu else 0.0, budget.gpu_source,
                      budget.others)


def _critic_plan(cfg: PPOConfig, device: str, d: ModelDims, seq: int, resp: int, per_node: int) -> ProcessPlan:
    c, n = cfg.critic, cfg.world_size
    gpu, w, P = device == "cuda", _bytes(c.fsdp_config.param_dtype, device), d.value_params()
    mini = (c.ppo_mini_batch_size or cfg.actor_rollout_ref.actor.ppo_mini_batch_size) * \
        cfg.actor_rollout_ref.rollout.n // n
    mb = micro_pass(seq, resp, rows=c.ppo_micro_batch_size_per_gpu,
                    budget=c.ppo_max_token_len_per_gpu if c.use_dynamic_bsz else 0, cap_rows=mini)
    base = {"states 16P/N": 16.0 * P / n, ("cuda context" if gpu else "runtime"): RUNTIME["cuda_context" if gpu
                                                                                          else "worker"]}
    host = RUNTIME["worker"] if gpu else 0.0
    if gpu and c.fsdp_config.param_offload:  # FSDP2's CPU offload: the states live on the host
        host += base.pop("states 16P/N")
    phases = {"update": update_bytes(d, mb, w=w, ckpt=c.model.enable_gradient_checkpointing, head=None,
                                     accum=mini * seq > mb.tokens),
              "values": forward_bytes(d, mb, w=w, head=None), "optimizer": {"step 4P/N": 4.0 * P / n}}
    return peak_of("critic", per_node, base, phases, on_gpu=gpu, host_extra=host)


# --------------------------------------------------------------------------------------------- fitting
def _set(cfg: PPOConfig, changes: dict[str, object]) -> PPOConfig:
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return out


class Planner:
    """Plans of `cfg` with changes applied, on one machine (budgets fixed at construction)."""

    def __init__(self, cfg: PPOConfig, device: str, dims: ModelDims, budget: Budget):
        self.cfg, self.device, self.dims, self.budget = cfg, device, dims, budget

    def plan(self, changes: dict[str, object] | None = None) -> MemoryPlan:
        return plan_config(_set(self.cfg, changes or {}), self.device, self.dims, self.budget)

    def fits(self, changes: dict[str, object]) -> bool:
        return self.plan(changes).fits

    def largest(self, lo: int, hi: int, ok) -> int | None:
        """The largest integer in [lo, hi] for which ok(x) holds (ok monotone decreasing), or None."""
        if hi < lo or not ok(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
        return lo


def _budget_groups(cfg: PPOConfig) -> list[tuple[tuple[str, ...], int]]:
    """(keys, configured tokens per micro-batch) of each pass whose budget the plan may lower."""
    arr, seq = cfg.actor_rollout_ref, cfg.data.max_prompt_length + cfg.data.max_response_length
    a, r, ref = arr.actor, arr.rollout, arr.ref

    def tokens(dynamic, budget, rows):
        return max(budget, seq) if dynamic else rows * seq

    update = [UPDATE_KEYS + (CRITIC_KEYS if cfg.use_critic else ()),
              tokens(a.use_dynamic_bsz, a.ppo_max_token_len_per_gpu, a.ppo_micro_batch_size_per_gpu)]
    groups = [tuple(update)]
    if not cfg.on_policy_update:
        groups.append((LOGPROB_KEYS, tokens(r.log_prob_use_dynamic_bsz, r.log_prob_max_token_len_per_gpu,
                                            r.log_prob_micro_batch_size_per_gpu)))
    if cfg.use_ref:
        groups.append((REF_KEYS, tokens(ref.log_prob_use_dynamic_bsz, ref.log_prob_max_token_len_per_gpu,
                                        ref.log_prob_micro_batch_size_per_gpu)))
    return groups


def _with_budget(keys: tuple[str, ...], tokens: int) -> dict[str, object]:
    return {k: (True if k.endswith("use_dynamic_bsz") else tokens) for k in keys}


def fit_budgets(p: Planner, ckpt: bool) -> tuple[dict[str, object], int] | None:
    """Changes (checkpointing as given) with the largest fitting budget of every pass; None when one row does
    not fit. Also returns the update budget chosen."""
    cfg, seq = p.cfg, p.cfg.data.max_prompt_length + p.cfg.data.max_response_length
    base: dict[str, object] = {k: ckpt for k in CKPT_KEYS[: 2 if cfg.use_critic else 1]}
    groups = _budget_groups(cfg)
    minimal = dict(base)
    for keys, _ in groups:
        minimal.update(_with_budget(keys, seq))
    if not p.fits(minimal):
        return None
    changes, update_tokens = dict(base), 0
    for i, (keys, configured) in enumerate(groups):
        others = {k: v for k, v in minimal.items() if k not in keys}
        if p.fits(others):  # this pass fits as configured
            update_tokens = update_tokens if i else configured
            continue
        best = p.largest(seq, configured, lambda b, o=others, k=keys: p.fits({**o, **_with_budget(k, b)}))
        best = max(seq, best // 64 * 64) if best > seq else best  # round down to 64 tokens, not below a row
        changes.update(_with_budget(keys, best))
        if i == 0:
            update_tokens = best
    return ({k: v for k, v in changes.items() if _differs(cfg, k, v)}, update_tokens)


def _differs(cfg: PPOConfig, key: str, value: object) -> bool:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node != value


def choose(p: Planner) -> dict[str, object] | None:
    """The auto adjustment (see the module docstring), or None when nothing fits."""
    cfg = p.cfg
    seq = cfg.data.max_prompt_length + cfg.data.max_response_length
    configured = _budget_groups(cfg)[0][1]
    if not cfg.actor_rollout_ref.model.enable_gradient_checkpointing:
        plain = fit_budgets(p, ckpt=False)
        if plain is not None and plain[1] >= min(configured, 2 * seq):
            return plain[0]
        with_ckpt = fit_budgets(p, ckpt=True)
        return (with_ckpt or plain or (None, 0))[0]
    found = fit_budgets(p, ckpt=True)
    return found[0] if found else None


def _minimal(cfg: PPOConfig) -> dict[str, object]:
    """Checkpointing on and one longest row per micro-batch in every pass: the least this config can need."""
    seq = cfg.data.max_prompt_length + cfg.data.max_response_length
    out: dict[str, object] = {k: True for k in CKPT_KEYS[: 2 if cfg.use_critic else 1]}
    for keys, _ in _budget_groups(cfg):
        out.update(_with_budget(keys, seq))
    return out


def remedies(p: Planner, minimal: bool) -> list[str]:
    """Other changes that fit, each alone with its amount, on top of the config as it is or (`minimal`) with
    checkpointing on and one longest row per micro-batch."""
    cfg, out = p.cfg, []

    def fits(changes: dict[str, object]) -> bool:
        changed = _set(cfg, changes)
        return Planner(changed, p.device, p.dims, p.budget).fits(_minimal(changed) if minimal else {})

    d, t, r = cfg.data, cfg.trainer, cfg.actor_rollout_ref.rollout
    for key, now in (("data.max_response_length", d.max_response_length), ("data.max_prompt_length",
                                                                           d.max_prompt_length)):
        best = p.largest(1, now - 1, lambda v, key=key: fits({key: v}))
        if best:
            out.append(f"lower {key} from {now} to <= {best}")
    if r.name == "vllm" and p.device != "cuda":
        quarters = p.largest(1, int(r.kv_cache_space_gb * 4) - 1, lambda q: fits({R + "kv_cache_space_gb": q / 4}))
        if quarters:
            out.append(f"lower {R}kv_cache_space_gb from {r.kv_cache_space_gb:g} to <= {quarters / 4:g}")
    if r.name == "vllm" and p.device == "cuda":
        hundredths = p.largest(5, int(r.gpu_memory_utilization * 100) - 1,
                               lambda u: fits({R + "gpu_memory_utilization": u / 100}))
        if hundredths:
            out.append(f"lower {R}gpu_memory_utilization from {r.gpu_memory_utilization:g} to <= {hundredths / 100}")
    ranks = p.largest(1, t.n_gpus_per_node - 1, lambda n: fits({"trainer.n_gpus_per_node": n}))
    if ranks:
        out.append(f"lower trainer.n_gpus_per_node from {t.n_gpus_per_node} to <= {ranks}")
    dtype_keys = [A + "fsdp_config.param_dtype"] + (["critic.fsdp_config.param_dtype"] if cfg.use_critic else [])
    if _bytes(cfg.actor_rollout_ref.actor.fsdp_config.param_dtype, p.device) == 4 and \
            fits({k: "bf16" for k in dtype_keys}):
        out.append("set " + " and ".join(f"{k}=bf16" for k in dtype_keys))
    if r.name == "vllm" and p.device != "cuda" and fits({R + "name": "hf"}):
        out.append(f"set {R}name=hf (the rollout engine in the worker process instead of vLLM's own processes)")
    if cfg.use_ref and fits({A + "use_kl_loss": False, "algorithm.use_kl_in_reward": False}):
        out.append(f"drop the reference model ({A}use_kl_loss=false, algorithm.use_kl_in_reward=false)")
    if p.device == "cuda":
        if not cfg.actor_rollout_ref.actor.fsdp_config.param_offload and fits({A + "fsdp_config.param_offload": True}):
            out.append(f"set {A}fsdp_config.param_offload=true")
    if t.colocated_server_gb > 0 and fits({"trainer.colocated_server_gb": 0.0}):
        out.append(f"run the simulation server on another machine (it takes {t.colocated_server_gb:.1f} GB here)")
    if t.memory_limit_gb:
        out.append(f"raise trainer.memory_limit_gb above {t.memory_limit_gb:g}")
    return out


def _format(changes: dict[str, object]) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())


def _apply(cfg: PPOConfig, changes: dict[str, object]) -> None:
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)


def apply_memory_plan(cfg: PPOConfig, device: str) -> MemoryPlan | None:
    """Plan `cfg` on this machine; in `auto` mode adjust it in place to fit. Returns the plan of the config that
    runs (None with trainer.memory_plan=off or when the model's config.json cannot be read)."""
    mode = cfg.trainer.memory_plan
    if mode not in MODES:
        raise ConfigError(f"trainer.memory_plan must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None
    path = cfg.actor_rollout_ref.model.path
    try:
        dims = model_dims(path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dims is None:
        logger.warning("memory plan skipped: no config.json for %s here (actor_rollout_ref.model.path)", path)
        return None
    p = Planner(cfg, device, dims, machine_budget(cfg, device))
    plan = p.plan()
    if plan.fits:
        logger.info("memory plan: %s", plan.describe())
        return plan
    changes = choose(p)
    if changes is None and cfg.trainer.memory_limit_gb is None and device != "cuda":
        least = p.plan(_minimal(cfg))
        if least.machine <= machine_ram():
            # Between Ray's kill threshold and the RAM itself: the plan adds every process's peak (they rarely
            # coincide) with conservative activations, so the machine's real use is lower; run at the plan's
            # minimum rather than refuse a job that may well fit (the per-step peaks then show the truth).
            logger.warning("memory plan: %s exceeds Ray's kill threshold even with gradient checkpointing and one "
                           "longest row per micro-batch, but not the RAM: running that way (watch "
                           "perf/max_memory_rss_gb/total)", least.describe(), extra=SHOW)
            changes = _minimal(cfg)
    if changes is None:
        seq = cfg.data.max_prompt_length + cfg.data.max_response_length
        fixes = "; or ".join(remedies(p, minimal=True)) or "use a machine with more memory"
        raise ConfigError(f"memory plan: the job does not fit, even with gradient checkpointing and one longest row "
                          f"({seq} tokens) per micro-batch: {p.plan(_minimal(cfg)).describe()}. To fit: {fixes} "
                          "(trainer.memory_plan=off skips this check)")
    if mode == "strict":
        fixes = "; or ".join([f"trainer.memory_plan=auto would set {_format(changes)}", *remedies(p, minimal=False)])
        raise ConfigError(f"memory plan (trainer.memory_plan=strict): the job does not fit: {plan.describe()}. To "
                          f"fit: {fixes} (trainer.memory_plan=off skips this check)")
    _apply(cfg, changes)
    fitted = plan_config(cfg, device, dims, p.budget)
    logger.info("memory plan: %.2f GB planned > %.2f GB allowed (%s); set %s -> %s", plan.machine / GB,
                plan.budget / GB, plan.budget_source, _format(changes), fitted.describe(), extra=SHOW)
    return fitted
