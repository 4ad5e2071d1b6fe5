"""Typed trainer configuration, validated once at start-up.

Hydra composes YAML + overrides into a plain dict; `load_config` turns it into these dataclasses with the shared
loader (`verl.utils.config_loader.from_dict`, also used by the components' sections).
Unknown keys, wrong types and cross-field violations (batch divisibility, lengths) fail here with a
message that names the key and the fix, before any worker starts. Key names follow verl's
(`data.train_batch_size`, `actor_rollout_ref.actor.optim.lr`, `algorithm.adv_estimator`, ...).
The sections `search` and `reward` are plain dicts, owned and validated by the plugged components
(the rollout and reward functions); the core never reads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from verl.utils.config_loader import ConfigError, from_dict


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=lambda: ["data/embedded/train.parquet"])
    val_files: list[str] = field(default_factory=lambda: ["data/embedded/test.parquet"])
    prompt_key: str = "prompt"
    max_prompt_length: int = 512
    max_response_length: int = 256  # total generated tokens per trajectory (all turns, incl. observations)
    max_obs_length: int = 256  # per <information> block
    train_batch_size: int = 8  # prompts per step (before rollout.n)
    val_batch_size: int | None = None  # None: whole val set in one pass (every row is scored anyway)
    val_max_samples: int | None = None  # cap the val rows (deterministic first-N), None: all
    shuffle: bool = True
    seed: int = 1
    apply_chat_template: bool = True
    # prompts longer than max_prompt_length: error (refuse the file, naming the row) | left | right | middle (cut
    # the start, the end or the middle: the system prompt and instructions are at the start)
    truncation: str = "error"
    assistant_prefix: str = ""  # text the assistant turn starts with (part of the prompt, not trained)


@dataclass
class OptimConfig:
    lr: float = 1e-6
    lr_warmup_steps_ratio: float = 0.0
    lr_warmup_steps: int = -1  # >= 0 overrides the ratio
    warmup_style: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    total_training_steps: int = -1  # filled from trainer.total_training_steps


@dataclass
class FSDPConfig:
    # CUDA only (refused on CPU): FSDP2's CPU offload keeps this model's parameters, gradients and Adam states on the
    # host; the optimizer steps there
    param_offload: bool = False
    optimizer_offload: bool = False  # verl's key; refused: param_offload already moves the optimizer states
    reshard_after_forward: bool = True
    param_dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16


@dataclass
class ModelConfig:
    path: str = "embedded"
    enable_gradient_checkpointing: bool = False
    use_remove_padding: bool = False  # verl's key; true is refused (padding is cut per micro-batch instead, see
    # actor.group_by_length / use_dynamic_bsz); packed variable-length sequences are not implemented
    trust_remote_code: bool = False


@dataclass
class ActorConfig:
    strategy: str = "fsdp2"
    ppo_mini_batch_size: int = 8  # prompts per optimizer step (x rollout.n samples)
    ppo_micro_batch_size_per_gpu: int = 4  # samples per forward/backward on one worker
    ppo_epochs: int = 1
    clip_ratio: float = 0.2
    clip_ratio_low: float | None = None  # None -> clip_ratio
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0  # dual-clip bound
    loss_agg_mode: str = "token-mean"
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    grad_clip: float = 1.0
    shuffle: bool = False
    group_by_length: bool = True  # micro-batches of similar-length rows (less padding; same gradient)
    use_dynamic_bsz: bool = False  # micro-batches by a token budget instead of a row count (verl's key)
    ppo_max_token_len_per_gpu: int = 16384  # that budget: rows x longest row of a micro-batch
    # log-probs and entropy from the hidden states, `logits_chunk_size` positions at a time (verl's key; verl chunks
    # only the entropy): at most one chunk of vocabulary-wide logits alive. false: full logits of the micro-batch
    entropy_from_logits_with_chunking: bool = True
    entropy_checkpointing: bool = True  # recompute each chunk's logits in backward instead of keeping them (verl's key)
    logits_chunk_size: int = 512  # positions per chunk of vocabulary-wide logits
    optim: OptimConfig = field(default_factory=OptimConfig)
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)

    @property
    def token_budget(self) -> int:
        """Tokens per micro-batch under use_dynamic_bsz, 0 when micro-batches count rows."""
        return self.ppo_max_token_len_per_gpu if self.use_dynamic_bsz else 0


@dataclass
class ValKwargs:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1
    do_sample: bool = False


SPECULATIVE_METHODS = ("none", "ngram")


@dataclass
class SpeculativeConfig:
    """Speculative decoding in the vLLM engine (vLLM's `speculative_config`; the keys keep vLLM's names).

    `ngram` is prompt-lookup decoding: the engine proposes the next tokens by matching the sequence's last
    `prompt_lookup_min`..`prompt_lookup_max` tokens earlier in its own context (the question, the inserted documents,
    what the policy wrote) and verifies up to `num_speculative_tokens` of them in one forward pass. The verification
    keeps the sampled distribution exactly (greedy: the same tokens), so it is a speed option, not a change of the
    algorithm. It pays off where few sequences decode (a step costs about the same for 1 or 8 of them): the tail of a
    rollout, where the last trajectories decode alone. No draft model, no extra memory."""

    method: str = "none"  # none | ngram
    num_speculative_tokens: int = 4  # tokens proposed (and verified) per step
    prompt_lookup_min: int = 2  # shortest n-gram matched
    prompt_lookup_max: int = 4  # longest n-gram matched
    # vLLM's dynamic schedule: [[first, last, k], ...] speculates k tokens while a step holds first..last sequences
    # (ranges from 1 up, ascending; k = 0 turns it off for that range), e.g. [[1, 8, 4], [9, 1024, 0]] speculates only
    # in the tail. null: always num_speculative_tokens.
    num_speculative_tokens_per_batch_size: list | None = None

    def engine_config(self) -> dict | None:
        """vLLM's `speculative_config` argument (None: off)."""
        if self.method == "none":
            return None
        out = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens,
               "prompt_lookup_min": self.prompt_lookup_min, "prompt_lookup_max": self.prompt_lookup_max}
        if self.num_speculative_tokens_per_batch_size is not None:
            out["num_speculative_tokens_per_batch_size"] = [
                tuple(int(x) for x in r) for r in self.num_speculative_tokens_per_batch_size]
        return out

    def schedule_error(self) -> str | None:
        """What is wrong with `num_speculative_tokens_per_batch_size` (None: nothing)."""
        sched = self.num_speculative_tokens_per_batch_size
        if sched is None:
            return None
        ok = isinstance(sched, list) and bool(sched) and all(
            isinstance(r, list | tuple) and len(r) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                  for x in r) for r in sched)
        if not ok:
            return f"must be a list of [first, last, k] integer triples, got {sched!r}"
        if sched[0][0] != 1 or any(a > b or k < 0 for a, b, k in sched) or any(
                nxt[0] <= prev[1] for prev, nxt in zip(sched, sched[1:])):
            return (f"needs ranges from 1 up, ascending and not overlapping (first <= last), k >= 0, got {sched!r}; "
                    "e.g. [[1, 8, 4], [9, 1024, 0]]")
        return None


@dataclass
class RolloutConfig:
    name: str = "vllm"  # vllm | hf
    # sync: the multi-turn rollout advances all rows turn by turn; async: every trajectory at its own pace on the
    # engine's asynchronous mode (vLLM AsyncLLM; each search sent when its trajectory asks). verl's key.
    mode: str = "sync"
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    gpu_memory_utilization: float = 0.5
    kv_cache_space_gb: float = 1.0  # CPU vLLM: VLLM_CPU_KVCACHE_SPACE
    tensor_model_parallel_size: int = 1
    enforce_eager: bool | None = None  # None: true on CPU, false on CUDA (vLLM captures CUDA graphs)
    log_prob_micro_batch_size_per_gpu: int = 8
    log_prob_use_dynamic_bsz: bool | None = None  # None: actor.use_dynamic_bsz
    log_prob_max_token_len_per_gpu: int | None = None  # None: actor.ppo_max_token_len_per_gpu
    max_num_seqs: int | None = None  # None: the rows a rank generates per step (train_batch_size x n / world size),
    # at least 64
    dtype: str = "auto"  # engine dtype: auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)  # vLLM only
    val_kwargs: ValKwargs = field(default_factory=ValKwargs)


@dataclass
class RefConfig:
    log_prob_micro_batch_size_per_gpu: int = 8
    log_prob_use_dynamic_bsz: bool | None = None  # None: actor.use_dynamic_bsz
    log_prob_max_token_len_per_gpu: int | None = None  # None: actor.ppo_max_token_len_per_gpu


@dataclass
class ActorRolloutRefConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ref: RefConfig = field(default_factory=RefConfig)


@dataclass
class CriticConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    ppo_mini_batch_size: int | None = None  # None -> actor's
    ppo_micro_batch_size_per_gpu: int = 4
    group_by_length: bool = True  # as actor.group_by_length
    use_dynamic_bsz: bool = False  # as actor.use_dynamic_bsz
    ppo_max_token_len_per_gpu: int = 32768
    ppo_epochs: int = 1
    cliprange_value: float = 0.5
    loss_agg_mode: str = "token-mean"
    grad_clip: float = 1.0
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)

    @property
    def token_budget(self) -> int:
        return self.ppo_max_token_len_per_gpu if self.use_dynamic_bsz else 0


@dataclass
class KLCtrlConfig:
    type: str = "fixed"  # fixed | adaptive
    kl_coef: float = 0.001
    target_kl: float = 0.1
    horizon: int = 10000


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    gamma: float = 1.0
    lam: float = 1.0
    norm_adv_by_std_in_grpo: bool = True
    use_kl_in_reward: bool = False
    kl_penalty: str = "kl"
    kl_ctrl: KLCtrlConfig = field(default_factory=KLCtrlConfig)


@dataclass
class ComponentConfig:
    """A pluggable function named by import path `package.module:function`, built with `kwargs`."""

    target: str = ""
    kwargs: dict = field(default_factory=dict)


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda
    n_gpus_per_node: int = 2  # workers per node (CPU: processes)
    nnodes: int = 1  # nodes of the Ray cluster (> 1: trainer.ray_address); one placement group per node
    # GPU ids of this node kept out of the local Ray cluster the trainer starts (e.g. a simulation server's)
    exclude_gpus: list[int] = field(default_factory=list)
    cpus_per_worker: float = 1.0  # Ray num_cpus per worker on CPU
    threads_per_worker: int = 0  # torch threads per worker, 0: cores // workers
    total_epochs: int = 1
    total_training_steps: int = 2
    project_name: str = "zerosearch"
    experiment_name: str = "run"
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    # console of the command line (verl.utils.console): records at this level and above are shown (DEBUG | INFO |
    # WARNING | ERROR); everything at INFO and above goes to <default_local_dir>/logs/train.log either way
    log_level: str = "WARNING"
    verbose: bool = False  # true: everything on the console, library output included, as without the run log
    save_freq: int = -1
    save_interval_minutes: float = 0.0  # a save_freq step saves only this long after the previous save (0: always)
    test_freq: int = -1
    val_before_train: bool = False
    val_only: bool = False
    default_local_dir: str = "checkpoints/${trainer.project_name}/${trainer.experiment_name}"
    resume_mode: str = "auto"  # auto | disable | resume_path
    resume_from_path: str | None = None
    max_actor_ckpt_to_keep: int | None = 2
    log_val_generations: int = 4  # sample trajectories logged per validation (JSONL + W&B table)
    log_train_generations: int = 0  # sample trajectories logged per training step
    seed: int = 1
    balance_batch: bool = True
    ray_address: str | None = None
    # memory plan at start-up (verl.utils.memory_fit), before Ray or any model: auto lowers the micro-batch token
    # budgets and/or turns on gradient checkpointing to fit the machine | strict refuses a config that does not fit
    # | off skips the plan
    memory_plan: str = "auto"
    memory_limit_gb: float | None = None  # what the plan may fill: RAM (CPU) or one GPU (CUDA); None: RAM x Ray's
    # kill threshold (RAY_memory_usage_threshold, default 0.95), or the GPU's memory
    colocated_server_gb: float = 0.0  # RAM of servers started on this machine for the run (the launcher's
    # simulation server); the plan counts it


@dataclass
class PPOConfig:
    data: DataConfig = field(default_factory=DataConfig)
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rollout_fn: ComponentConfig = field(default_factory=ComponentConfig)  # default: single-turn generation
    reward_fn: ComponentConfig = field(default_factory=ComponentConfig)
    dataset_check: ComponentConfig = field(default_factory=ComponentConfig)  # fn(df, source) raising on bad schema
    # Sections owned by the plugged components (opaque to the core, validated by their owners):
    search: dict = field(default_factory=dict)
    reward: dict = field(default_factory=dict)

    @property
    def use_critic(self) -> bool:
        return self.algorithm.adv_estimator == "gae"

    @property
    def use_ref(self) -> bool:
        return self.actor_rollout_ref.actor.use_kl_loss or self.algorithm.use_kl_in_reward

    @property
    def on_policy_update(self) -> bool:
        """One epoch over one mini-batch: the policy that sampled is the policy being updated, so the old
        log-probs equal the detached current ones and the separate old-log-prob pass is skipped."""
        a = self.actor_rollout_ref.actor
        return (a.ppo_epochs == 1 and a.ppo_mini_batch_size >= self.data.train_batch_size
                and not self.algorithm.use_kl_in_reward)

    @property
    def world_size(self) -> int:
        return self.trainer.n_gpus_per_node * self.trainer.nnodes


# ---------------------------------------------------------------------------------------------
# cross-field rules

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
TRUNCATIONS = ("error", "left", "right", "middle")  # verl's data.truncation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: PPOConfig) -> PPOConfig:
    """Cross-field rules; every message names the keys involved and how to fix them."""
    d, a, t = cfg.data, cfg.actor_rollout_ref.actor, cfg.trainer
    r = cfg.actor_rollout_ref.rollout
    ws = cfg.world_size
    _check(t.device in ("auto", "cpu", "cuda"), f"trainer.device must be auto, cpu or cuda, got {t.device!r}")
    _check(r.name in ("vllm", "hf"), f"actor_rollout_ref.rollout.name must be 'vllm' or 'hf', got {r.name!r}")
    _check(isinstance(r.mode, str) and bool(r.mode), "actor_rollout_ref.rollout.mode must name a rollout mode "
           f"(sync or async; the rollout component checks the name), got {r.mode!r}")
    _check(r.mode == "sync" or r.name == "vllm", "actor_rollout_ref.rollout.mode=async needs the vLLM engine "
           f"(its AsyncLLM); rollout.name={r.name!r} has only the batched path: set rollout.name=vllm or mode=sync")
    from verl.workers.rollout import ROLLOUT_DTYPES

    _check(r.dtype in ROLLOUT_DTYPES, f"actor_rollout_ref.rollout.dtype must be one of {list(ROLLOUT_DTYPES)}, got "
           f"{r.dtype!r}")
    sp = r.speculative
    _check(sp.method in SPECULATIVE_METHODS, f"actor_rollout_ref.rollout.speculative.method must be one of "
           f"{'|'.join(SPECULATIVE_METHODS)}, got {sp.method!r}")
    _check(sp.method == "none" or r.name == "vllm", f"actor_rollout_ref.rollout.speculative.method={sp.method} is a "
           f"vLLM engine option; rollout.name={r.name!r} has none: set speculative.method=none or rollout.name=vllm")
    _check(sp.num_speculative_tokens >= 1, "actor_rollout_ref.rollout.speculative.num_speculative_tokens must be "
           f">= 1, got {sp.num_speculative_tokens}")
    _check(1 <= sp.prompt_lookup_min <= sp.prompt_lookup_max, "actor_rollout_ref.rollout.speculative needs 1 <= "
           f"prompt_lookup_min <= prompt_lookup_max, got {sp.prompt_lookup_min} and {sp.prompt_lookup_max}")
    sched_error = sp.schedule_error()
    _check(sched_error is None, f"actor_rollout_ref.rollout.speculative.num_speculative_tokens_per_batch_size "
           f"{sched_error}")
    _check(t.n_gpus_per_node >= 1 and t.nnodes >= 1,
           f"trainer.n_gpus_per_node ({t.n_gpus_per_node}) and trainer.nnodes ({t.nnodes}) must be >= 1")
    _check(t.cpus_per_worker > 0, f"trainer.cpus_per_worker must be > 0, got {t.cpus_per_worker}")
    _check(not t.exclude_gpus or t.device != "cpu", "trainer.exclude_gpus keeps GPUs out of the trainer's pool: it "
           "needs trainer.device=cuda (or auto); remove it on CPU")
    _check(t.total_training_steps >= 1, "trainer.total_training_steps must be >= 1")
    _check(d.max_prompt_length > 0 and d.max_response_length > 0,
           "data.max_prompt_length and data.max_response_length must be > 0")
    _check(d.truncation in TRUNCATIONS, f"data.truncation must be one of {'|'.join(TRUNCATIONS)}, got "
           f"{d.truncation!r}")
    _check(r.n >= 1, "actor_rollout_ref.rollout.n must be >= 1")
    for key, size in (("data.train_batch_size", d.train_batch_size), ("data.val_batch_size", d.val_batch_size),
                      ("data.val_max_samples", d.val_max_samples),
                      ("actor_rollout_ref.actor.ppo_mini_batch_size", a.ppo_mini_batch_size),
                      ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", a.ppo_micro_batch_size_per_gpu),
                      ("actor_rollout_ref.actor.ppo_epochs", a.ppo_epochs),
                      ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                       r.log_prob_micro_batch_size_per_gpu),
                      ("actor_rollout_ref.rollout.val_kwargs.n", r.val_kwargs.n),
                      ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
                       cfg.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu),
                      ("critic.ppo_mini_batch_size", cfg.critic.ppo_mini_batch_size),
                      ("critic.ppo_micro_batch_size_per_gpu", cfg.critic.ppo_micro_batch_size_per_gpu),
                      ("critic.ppo_epochs", cfg.critic.ppo_epochs), ("trainer.total_epochs", t.total_epochs)):
        _check(size is None or size >= 1, f"{key} must be >= 1, got {size}")
    _check(d.max_obs_length > 0, f"data.max_obs_length must be > 0, got {d.max_obs_length}")
    from verl.trainer.ppo.core_algos import get_adv_estimator

    try:
        get_adv_estimator(cfg.algorithm.adv_estimator)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"algorithm.adv_estimator: {e}") from None
    if cfg.algorithm.adv_estimator in ("grpo", "grpo_no_std", "rloo"):
        _check(r.n >= 2, f"algorithm.adv_estimator={cfg.algorithm.adv_estimator} compares samples of one prompt: "
                         f"set actor_rollout_ref.rollout.n >= 2 (got {r.n})")
    _check(a.loss_agg_mode in LOSS_AGG_MODES,
           f"actor_rollout_ref.actor.loss_agg_mode must be one of {LOSS_AGG_MODES}, got {a.loss_agg_mode!r}")
    _check(a.kl_loss_type in KL_TYPES, f"actor_rollout_ref.actor.kl_loss_type must be one of {KL_TYPES}")
    _check(cfg.algorithm.kl_penalty in KL_TYPES, f"algorithm.kl_penalty must be one of {KL_TYPES}")
    _check(cfg.algorithm.kl_ctrl.type in ("fixed", "adaptive"), "algorithm.kl_ctrl.type must be fixed or adaptive")
    total = d.train_batch_size * r.n
    _check(total % ws == 0, f"data.train_batch_size * rollout.n = {total} must divide evenly over {ws} workers "
                            "(trainer.n_gpus_per_node * trainer.nnodes)")
    _check(a.ppo_mini_batch_size <= d.train_batch_size and d.train_batch_size % a.ppo_mini_batch_size == 0,
           f"data.train_batch_size={d.train_batch_size} must be a multiple of "
           f"actor_rollout_ref.actor.ppo_mini_batch_size={a.ppo_mini_batch_size}")
    per_rank = a.ppo_mini_batch_size * r.n
    _check(per_rank % ws == 0, f"actor.ppo_mini_batch_size * rollout.n = {per_rank} must divide over {ws} workers")
    per_rank //= ws
    _check(a.use_dynamic_bsz or per_rank % a.ppo_micro_batch_size_per_gpu == 0,
           f"a mini-batch holds {per_rank} samples per worker: actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="
           f"{a.ppo_micro_batch_size_per_gpu} must divide it (or set actor_rollout_ref.actor.use_dynamic_bsz=true)")
    _check(a.logits_chunk_size >= 1,
           f"actor_rollout_ref.actor.logits_chunk_size must be >= 1, got {a.logits_chunk_size}")
    for key, budget in (("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", a.ppo_max_token_len_per_gpu),
                        ("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu", r.log_prob_max_token_len_per_gpu),
                        ("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
                         cfg.actor_rollout_ref.ref.log_prob_max_token_len_per_gpu),
                        ("critic.ppo_max_token_len_per_gpu", cfg.critic.ppo_max_token_len_per_gpu)):
        _check(budget is None or budget >= 1, f"{key} must be >= 1 tokens, got {budget}")
    if cfg.use_critic:
        c = cfg.critic
        mini = (c.ppo_mini_batch_size or a.ppo_mini_batch_size) * r.n // ws
        _check(c.use_dynamic_bsz or mini % c.ppo_micro_batch_size_per_gpu == 0,
               f"critic.ppo_micro_batch_size_per_gpu={c.ppo_micro_batch_size_per_gpu} must divide the critic's "
               f"{mini} samples per worker per mini-batch")
    for key, fc in (("actor_rollout_ref.actor.fsdp_config", a.fsdp_config), ("critic.fsdp_config",
                                                                             cfg.critic.fsdp_config)):
        _check(not fc.optimizer_offload, f"{key}.optimizer_offload=true: FSDP2's CPU offload moves parameters, "
               f"gradients and Adam states together; set {key}.param_offload=true (and optimizer_offload=false)")
        _check(not (fc.param_offload and t.device == "cpu"), f"{key}.param_offload moves GPU memory to the host: it "
               "does nothing with trainer.device=cpu; set it false")
    for key, m in (("actor_rollout_ref.model", cfg.actor_rollout_ref.model), ("critic.model", cfg.critic.model)):
        _check(not m.use_remove_padding, f"{key}.use_remove_padding=true (packed variable-length sequences) is not "
               "implemented: padding is cut per micro-batch instead (actor.group_by_length, use_dynamic_bsz); set it "
               "false")
    _check(r.max_num_seqs is None or r.max_num_seqs >= 1,
           f"actor_rollout_ref.rollout.max_num_seqs must be >= 1 (or null: sized from the batch), got {r.max_num_seqs}")
    _check(t.save_interval_minutes >= 0,
           f"trainer.save_interval_minutes must be >= 0 (0: every save_freq step), got {t.save_interval_minutes}")
    _check(t.resume_mode in ("auto", "disable", "resume_path"),
           f"trainer.resume_mode must be auto, disable or resume_path, got {t.resume_mode!r}")
    if t.resume_mode == "resume_path":
        _check(bool(t.resume_from_path), "trainer.resume_mode=resume_path needs trainer.resume_from_path")
    for lg in t.logger:
        _check(lg in ("console", "jsonl", "wandb"), f"trainer.logger: unknown backend {lg!r} (console, jsonl, wandb)")
    _check(t.memory_plan in ("auto", "strict", "off"), f"trainer.memory_plan must be auto, strict or off, got "
           f"{t.memory_plan!r}")
    _check(t.memory_limit_gb is None or t.memory_limit_gb > 0,
           f"trainer.memory_limit_gb must be > 0 GB (or null: the machine's), got {t.memory_limit_gb}")
    _check(t.colocated_server_gb >= 0, f"trainer.colocated_server_gb must be >= 0, got {t.colocated_server_gb}")
    _check(t.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
           f"trainer.log_level must be DEBUG, INFO, WARNING or ERROR, got {t.log_level!r}")
    return cfg


def _device_of(device: str) -> str:
    """trainer.device with `auto` resolved (cuda when a GPU is visible); other values as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_rollout_defaults(cfg: PPOConfig) -> PPOConfig:
    """Fill the rollout keys whose default depends on the run (load_config does; call it on a config built by hand):
    max_num_seqs null -> the rows a rank generates per step, at least 64 (all of them batched at once);
    enforce_eager null -> true on CPU, false on CUDA (vLLM captures CUDA graphs)."""
    r = cfg.actor_rollout_ref.rollout
    if r.max_num_seqs is None:
        rows = -(-cfg.data.train_batch_size * r.n // max(1, cfg.world_size))
        r.max_num_seqs = max(64, rows)
    if r.enforce_eager is None:
        r.enforce_eager = _device_of(cfg.trainer.device) != "cuda"
    return cfg


def load_config(data: dict) -> PPOConfig:
    """dict (e.g. from Hydra, resolved) -> validated PPOConfig."""
    cfg = from_dict(PPOConfig, data)
    t = cfg.trainer  # the dataclass default carries Hydra-style interpolations; resolve them without Hydra
    t.default_local_dir = t.default_local_dir.replace("${trainer.project_name}", t.project_name).replace(
        "${trainer.experiment_name}", t.experiment_name)
    if cfg.actor_rollout_ref.actor.optim.total_training_steps < 0:
        cfg.actor_rollout_ref.actor.optim.total_training_steps = cfg.trainer.total_training_steps
    if cfg.critic.optim.total_training_steps < 0:
        cfg.critic.optim.total_training_steps = cfg.trainer.total_training_steps
    arr = cfg.actor_rollout_ref
    for part in (arr.rollout, arr.ref):  # verl interpolates these from the actor's keys
        if part.log_prob_use_dynamic_bsz is None:
            part.log_prob_use_dynamic_bsz = arr.actor.use_dynamic_bsz
        if part.log_prob_max_token_len_per_gpu is None:
            part.log_prob_max_token_len_per_gpu = arr.actor.ppo_max_token_len_per_gpu
    resolve_rollout_defaults(cfg)
    if cfg.critic.model.path == ModelConfig.path and cfg.actor_rollout_ref.model.path != ModelConfig.path:
        cfg.critic.model.path = cfg.actor_rollout_ref.model.path
    return validate(cfg)


def to_dict(cfg: PPOConfig) -> dict:
    return dataclasses.asdict(cfg)
