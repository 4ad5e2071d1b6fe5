"""Hydra entry point: `python -m verl.trainer.main_ppo [--config-name NAME] key=value ...`.

Composes `configs/<name>.yaml` with the overrides, validates it into a typed `PPOConfig` (errors name the
key), runs the start-up check (`verl.trainer.preflight`: model paths, data files, the components' config), starts
Ray (CPU cores or GPUs), builds the worker groups and the plugged components, and runs `RayPPOTrainer.fit()`.
`run(cfg)` is the same thing without Hydra, for scripts and tests.

The command line keeps the console quiet (`verl.utils.console`: everything goes to
`<trainer.default_local_dir>/logs/train.log`, the console shows progress, metrics and what matters;
`trainer.log_level`, `trainer.verbose`) and turns a failure into one paragraph (`verl.utils.failure`) and an
exit code: 1 failed, 2 config error, 130 interrupted (143 SIGTERM, 129 SIGHUP: handled like Ctrl-C, and a reaper
stops whatever a SIGKILL of the driver would leave, `verl.utils.reaper`). No Hydra traceback hint: errors never reach
Hydra.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from verl.trainer import preflight
from verl.trainer.config import ConfigError, PPOConfig, load_config, to_dict
from verl.utils import console

logger = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    return device


def init_ray(cfg: PPOConfig, device: str) -> None:
    """Join the cluster at `trainer.ray_address`, or start a fresh local one sized for the run (one node)."""
    import ray

    if ray.is_initialized():
        return
    t = cfg.trainer
    env = {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    for k in ("ZEROSEARCH_CACHE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE"):
        if k in os.environ:
            env[k] = os.environ[k]
    kwargs = dict(include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": env})
    if t.ray_address:
        if t.exclude_gpus:
            raise ConfigError("trainer.exclude_gpus applies to the local cluster the trainer starts; on a cluster "
                              "(trainer.ray_address) give each node only the trainer's GPUs instead: "
                              "CUDA_VISIBLE_DEVICES=0,1,2,3 ray start ...")
        kwargs["address"] = t.ray_address
    else:  # always a fresh local cluster, never one left behind by a killed run (or `ray start`) on this machine
        if t.nnodes > 1:
            raise ConfigError(f"trainer.nnodes={t.nnodes} needs a Ray cluster of that many nodes: start it (`ray start "
                              "--head` on one node, `ray start --address=HEAD_IP:6379` on the others) and set "
                              "trainer.ray_address=auto (NNODES in the train scripts does)")
        kwargs["address"] = "local"
        if device == "cpu" and t.exclude_gpus:
            raise ConfigError("trainer.exclude_gpus needs CUDA (the run resolved to CPU): remove it")
        if device == "cpu":  # logical CPUs: one bundle per worker (a critic shares the actor's bundles)
            kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(cfg.world_size * t.cpus_per_worker))
        elif t.exclude_gpus:  # the simulation server's GPUs stay out of Ray's pool
            import torch

            from verl.single_controller.placement import visible_gpus

            try:
                left = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), t.exclude_gpus)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, left))  # the raylet inherits it
            kwargs["num_gpus"] = len(left)
    console.init_ray(**kwargs)  # ray.init; in a quiet run Ray's output is routed to the run log


def worker_groups(cfg: PPOConfig, device: str, actor_cls: type, critic_cls: type | None = None,
                  max_concurrency: int = 1):
    """The resource pool (trainer.nnodes x trainer.n_gpus_per_node bundles) and the worker groups in it: the actor
    group (actor + reference + rollout) and, with a critic, the critic group on the same bundles (half of each)."""
    from verl.single_controller.placement import ResourcePool, plan_pool
    from verl.single_controller.ray_worker_group import RayWorkerGroup

    t = cfg.trainer
    plan = plan_pool(t.nnodes, t.n_gpus_per_node, device, t.cpus_per_worker)
    colocated = cfg.use_critic and critic_cls is not None
    pool = ResourcePool(plan, name="actor_rollout_ref + critic" if colocated else "actor_rollout_ref")
    share = 0.5 if colocated else 1.0  # Ray's accounting only: each process still sees the whole GPU / its threads
    actor_wg = critic_wg = None
    try:
        actor_wg = RayWorkerGroup(actor_cls, cfg.world_size, init_args=(cfg,), device=device, resource_pool=pool,
                                  share=share, name="actor_rollout_ref", max_concurrency=max_concurrency)
        if colocated:
            critic_wg = RayWorkerGroup(critic_cls, cfg.world_size, init_args=(cfg,), device=device,
                                       resource_pool=pool, share=share, name="critic")
    except BaseException:
        if actor_wg is not None:
            actor_wg.shutdown()
        pool.remove()
        raise
    logger.info(plan.describe(["actor_rollout_ref", "critic"] if colocated else ["actor_rollout_ref"]))
    return pool, actor_wg, critic_wg


def placement_report(cfg: PPOConfig) -> list[str]:
    """What the run would reserve (the launcher's DRY_RUN): the pool's plan and, with trainer.ray_address, each
    rank's node, LOCAL_RANK and GPU as that cluster places them (probe actors only: no model, no process group)."""
    import ray

    from verl.single_controller.placement import PlacementProbe, plan_pool

    t = cfg.trainer
    device = t.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plan_pool(t.nnodes, t.n_gpus_per_node, device, t.cpus_per_worker)
    groups = ["actor_rollout_ref", "critic"] if cfg.use_critic else ["actor_rollout_ref"]
    lines = [plan.describe(groups)]
    if not t.ray_address:
        return lines
    ray.init(address=t.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        pool, actor_wg, critic_wg = worker_groups(cfg, device, PlacementProbe, PlacementProbe)
        for wg in (actor_wg, critic_wg):
            if wg is None:
                continue
            for w in wg.execute_all("where"):
                lines.append(f"{w['WORKER_GROUP']} rank {w['RANK']}: node {w['ip']} ({w['node_id'][:8]}) "
                             f"LOCAL_RANK {w['LOCAL_RANK']} CUDA_VISIBLE_DEVICES={w['CUDA_VISIBLE_DEVICES'] or '-'} "
                             f"MASTER_ADDR={w['MASTER_ADDR']}")
            wg.shutdown()
        pool.remove()
    finally:
        ray.shutdown()
    return lines


def load_tokenizer(cfg: PPOConfig):
    """The actor model's tokenizer (the embedded model is converted here, once, in the driver)."""
    from transformers import AutoTokenizer

    from verl.utils.models import resolve_model_path

    model_dir = resolve_model_path(cfg.actor_rollout_ref.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_datasets(cfg: PPOConfig, tokenizer):
    """(train, val) prompt datasets, tokenised and checked (schema, prompt lengths): ConfigError on a problem."""
    from verl.trainer.ppo.ray_trainer import load_datasets as load

    check = preflight.component(cfg.dataset_check.target, "dataset_check.target")
    try:
        return load(cfg, tokenizer, check)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # schema errors name the file and the column
        raise ConfigError(str(e)) from None


def build_trainer(cfg: PPOConfig, device: str, memory_plan=None, tokenizer=None, datasets=None):
    """Worker groups + tokenizer + components -> RayPPOTrainer (Ray must be up); `memory_plan` is logged beside the
    measured peaks each step; `tokenizer` and `datasets` (load_tokenizer, load_datasets) are built when not given."""
    from verl.trainer.ppo.components import load_component, make_last_number_reward, make_single_turn_rollout
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.utils.tracking import Tracking
    from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)

    def component(c, default, key):
        factory = load_component(c.target, key) if c.target else default
        return factory(cfg, tokenizer, **c.kwargs)

    rollout_fn = component(cfg.rollout_fn, make_single_turn_rollout, "rollout_fn.target")
    reward_fn = component(cfg.reward_fn, make_last_number_reward, "reward_fn.target")
    check = load_component(cfg.dataset_check.target, "dataset_check.target") if cfg.dataset_check.target else None

    t = cfg.trainer
    r = cfg.actor_rollout_ref.rollout
    # async rollouts: the actor's request threads take single requests concurrently (one per running sequence)
    concurrency = r.max_num_seqs + 4 if r.mode == "async" else 1
    _, actor_wg, critic_wg = worker_groups(cfg, device, ActorRolloutRefWorker, CriticWorker,
                                           max_concurrency=concurrency)
    actor_wg.execute_all("init_model")
    if critic_wg is not None:
        critic_wg.execute_all("init_model")
    log_dir = Path(t.default_local_dir) / "logs"
    tracker = Tracking(t.project_name, t.experiment_name, t.logger, to_dict(cfg), str(log_dir),
                       t.total_training_steps)
    return RayPPOTrainer(cfg, tokenizer, actor_wg, critic_wg, rollout_fn, reward_fn, tracker=tracker,
                         dataset_check=check, memory_plan=memory_plan, datasets=datasets)


def run(cfg: PPOConfig, check: bool = True) -> dict:
    """Train; `check=False` skips the start-up check (`verl.trainer.preflight`) when the caller has run it."""
    import ray

    from verl.utils.memory_fit import apply_memory_plan

    if check:
        preflight.check(cfg)  # model paths, data files, components' config: before Ray and any model
    device = resolve_device(cfg.trainer.device)
    plan = apply_memory_plan(cfg, device)  # trainer.memory_plan: may adjust cfg or refuse it, before Ray and models
    tokenizer = load_tokenizer(cfg)
    datasets = load_datasets(cfg, tokenizer)  # prompt lengths (data.truncation) are known only once tokenised
    init_ray(cfg, device)
    trainer = build_trainer(cfg, device, memory_plan=plan, tokenizer=tokenizer, datasets=datasets)
    try:
        return trainer.fit()
    finally:
        close = getattr(trainer.rollout_fn, "close", None)  # e.g. search backends' HTTP pools
        if close is not None:
            close()
        if trainer.tracker is not None:
            trainer.tracker.finish()
        for wg in (trainer.actor_wg, trainer.critic_wg):
            if wg is not None:
                wg.shutdown()
        trainer.actor_wg.pool.remove()
        if ray.is_initialized():
            ray.shutdown()


def run_cli(cfg: PPOConfig, check: bool = True) -> int:
    """`run(cfg)` for the command line: the exit code (0 done, 1 failed, 2 config error, 130 interrupted); a failure
    prints one paragraph on the console (worker, memory, checkpoint, what to change), the raw report goes to the log."""
    from verl.utils import failure, progress

    try:
        summary = run(cfg, check=check)
    except ConfigError as e:
        progress.abort()
        console.console_write(f"config error: {e}")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (verl.utils.reaper.Terminated)
        from verl.utils.reaper import exit_code

        progress.abort()
        console.console_write(f"interrupted{f' ({e})' if str(e) else ''}. {failure.resume_hint(cfg)}")
        return exit_code(e)
    except Exception as e:
        failure.report_failure(e, cfg)
        return 1
    logger.info("done: step %s, last checkpoint %s", summary["global_step"], summary["last_checkpoint"],
                extra=console.SHOW)
    return 0


def compose_config(config_name: str = "ppo_trainer", overrides: list[str] | None = None) -> PPOConfig:
    """The same config the command line would build, without running Hydra's main (tests, scripts)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        dcfg = compose(config_name=config_name, overrides=list(overrides or []))
    data = OmegaConf.to_container(dcfg, resolve=True)
    data.pop("hydra", None)
    return load_config(data)


SECRET_ENV = "ZEROSEARCH_SECRET_{}"


def hide_secret_overrides(argv: list[str], environ=os.environ) -> list[str]:
    """`argv` with the value of every secret-looking override (`+search.serpapi_key=...`, `*api_key=`, `*token=`,
    `*secret*=`: `verl.utils.tracking.redact`'s notion) moved into the environment and replaced by the interpolation
    `${oc.env:ZEROSEARCH_SECRET_<i>}`, so that neither Hydra's messages nor the run log ever show it."""
    from verl.utils.tracking import _secret_name

    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if eq and value and not value.startswith("${") and not name.startswith("-") and _secret_name(name):
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":  # Hydra's quoting
                value = value[1:-1]
            env = SECRET_ENV.format(i)
            environ[env] = value
            arg = f"{name}=${{oc.env:{env}}}"
        out.append(arg)
    return out


def _created_dir(path: Path) -> Path | None:
    """The outermost directory that creating `path` would make (None when `path` exists)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_if_only_logs(created: Path | None, run_dir: Path) -> None:
    """After a config error: remove the directories this run created, if they hold nothing but its logs."""
    import shutil

    if created is None or not run_dir.is_dir() or set(os.listdir(run_dir)) - {"logs"}:
        return
    logging.shutdown()  # closes the run log's file handler
    shutil.rmtree(created, ignore_errors=True)


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    sys.argv[1:] = hide_secret_overrides(sys.argv[1:])

    @hydra.main(config_path=CONFIG_DIR, config_name="ppo_trainer", version_base=None)
    def _main(dcfg) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per search request otherwise
        try:
            cfg = load_config(OmegaConf.to_container(dcfg, resolve=True))
            preflight.check(cfg)  # before the run's log dir exists: a config error leaves nothing behind
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        t = cfg.trainer
        run_dir = Path(t.default_local_dir)
        created = _created_dir(run_dir)
        console.setup_run_logging(run_dir / "logs", t.log_level, t.verbose)
        from verl.utils import reaper

        reaper.guard()  # SIGTERM / SIGHUP shut Ray down like Ctrl-C; a reaper stops what a SIGKILL would leave
        code = run_cli(cfg, check=False)
        if code == 2:  # a config error found after start-up (device, memory plan, prompt lengths)
            _remove_if_only_logs(created, run_dir)
        raise SystemExit(code)  # SystemExit passes through Hydra, which would add its own traceback hint

    _main()


if __name__ == "__main__":
    main()
