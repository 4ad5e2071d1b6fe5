"""Hydra entry point: `python -m verl.trainer.main_ppo [--config-name NAME] key=value ...`.

Composes `configs/<name>.yaml` with the overrides, validates it into a typed `PPOConfig` (errors name the
key), starts Ray (CPU cores or GPUs), builds the worker groups and the plugged components, and runs
`RayPPOTrainer.fit()`. `run(cfg)` is the same thing without Hydra, for scripts and tests.

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
    import ray

    if ray.is_initialized():
        return
    env = {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    for k in ("ZEROSEARCH_CACHE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE"):
        if k in os.environ:
            env[k] = os.environ[k]
    kwargs = dict(include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": env})
    if cfg.trainer.ray_address:
        kwargs["address"] = cfg.trainer.ray_address
    else:  # always a fresh local cluster, never one left behind by a killed run (or `ray start`) on this machine
        kwargs["address"] = "local"
        if device == "cpu":  # logical CPUs: the actor group, plus the critic group sharing the same cores
            need = cfg.world_size * cfg.trainer.cpus_per_worker * (1.5 if cfg.use_critic else 1.0)
            kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(need))
    console.init_ray(**kwargs)  # ray.init; in a quiet run Ray's output is routed to the run log


def build_trainer(cfg: PPOConfig, device: str, memory_plan=None):
    """Worker groups + tokenizer + components -> RayPPOTrainer (Ray must be up); `memory_plan` is logged beside the
    measured peaks each step."""
    from transformers import AutoTokenizer

    from verl.single_controller.ray_worker_group import RayWorkerGroup
    from verl.trainer.ppo.components import load_component, make_last_number_reward, make_single_turn_rollout
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.utils.models import resolve_model_path
    from verl.utils.tracking import Tracking
    from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker

    model_dir = resolve_model_path(cfg.actor_rollout_ref.model.path)  # convert once in the driver
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def component(c, default, key):
        factory = load_component(c.target, key) if c.target else default
        return factory(cfg, tokenizer, **c.kwargs)

    rollout_fn = component(cfg.rollout_fn, make_single_turn_rollout, "rollout_fn.target")
    reward_fn = component(cfg.reward_fn, make_last_number_reward, "reward_fn.target")
    check = load_component(cfg.dataset_check.target, "dataset_check.target") if cfg.dataset_check.target else None

    t = cfg.trainer
    actor_wg = RayWorkerGroup(ActorRolloutRefWorker, cfg.world_size, init_args=(cfg,), device=device,
                              cpus_per_worker=t.cpus_per_worker, name="actor_rollout_ref")
    critic_wg = None
    if cfg.use_critic:
        critic_wg = RayWorkerGroup(CriticWorker, cfg.world_size, init_args=(cfg,), device=device,
                                   cpus_per_worker=t.cpus_per_worker / 2 if device == "cpu" else 1.0, name="critic")
    actor_wg.execute_all("init_model")
    if critic_wg is not None:
        critic_wg.execute_all("init_model")
    log_dir = Path(t.default_local_dir) / "logs"
    tracker = Tracking(t.project_name, t.experiment_name, t.logger, to_dict(cfg), str(log_dir),
                       t.total_training_steps)
    return RayPPOTrainer(cfg, tokenizer, actor_wg, critic_wg, rollout_fn, reward_fn, tracker=tracker,
                         dataset_check=check, memory_plan=memory_plan)


def run(cfg: PPOConfig) -> dict:
    import ray

    from verl.utils.memory_fit import apply_memory_plan

    device = resolve_device(cfg.trainer.device)
    plan = apply_memory_plan(cfg, device)  # trainer.memory_plan: may adjust cfg or refuse it, before Ray and models
    init_ray(cfg, device)
    trainer = build_trainer(cfg, device, memory_plan=plan)
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
        if ray.is_initialized():
            ray.shutdown()


def run_cli(cfg: PPOConfig) -> int:
    """`run(cfg)` for the command line: the exit code (0 done, 1 failed, 2 config error, 130 interrupted); a failure
    prints one paragraph on the console (worker, memory, checkpoint, what to change), the raw report goes to the log."""
    from verl.utils import failure, progress

    try:
        summary = run(cfg)
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


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(config_path=CONFIG_DIR, config_name="ppo_trainer", version_base=None)
    def _main(dcfg) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per search request otherwise
        try:
            cfg = load_config(OmegaConf.to_container(dcfg, resolve=True))
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        t = cfg.trainer
        console.setup_run_logging(Path(t.default_local_dir) / "logs", t.log_level, t.verbose)
        from verl.utils import reaper

        reaper.guard()  # SIGTERM / SIGHUP shut Ray down like Ctrl-C; a reaper stops what a SIGKILL would leave
        raise SystemExit(run_cli(cfg))  # SystemExit passes through Hydra, which would add its own traceback hint

    _main()


if __name__ == "__main__":
    main()
