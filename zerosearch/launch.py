"""The train scripts' command line: `bash train_grpo.sh KEY VALUE ... [a.b=c ...]`.

Accepts the original ZeroSearch command lines unchanged, but by key instead of position: any order,
every key optional with a default (embedded model, embedded world, prompted simulator, CPU when there
is no GPU), unknown keys and missing values rejected (exit 2) with the list of valid keys, and anything
of the form `a.b=c` passed through to Hydra. When the search mode is a simulation and nothing answers
at IP:PORT, a local simulation model is served for the run and stopped on exit (Ctrl-C included).
Boolean keys take true/false, 1/0 or yes/no (any case); anything else exits 2. Every value is checked before anything
starts (`zerosearch.launch_args`; `check_values`: numbers and their ranges, choices, addresses, names; `check_local`:
model dirs, data files, the local corpus, a SerpAPI key for google, a GPU for DEVICE cuda): a bad one exits 2 with one
line naming the key.
The dry run prints `check_local`'s problems as warnings (it may plan for another machine). The run's log is
`<checkpoint dir>/logs/train.log` (this launcher's lines, then the trainer's and its workers'), the simulation
server's `simulation_server.log` next to it; the console stays quiet unless LOG_LEVEL / VERBOSE say otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from zerosearch.launch_args import (  # noqa: F401 (re-exported: the launcher's keys and checks)
    BOOL_KEYS,
    EMBEDDED_DATA,
    KEYS,
    ROOT,
    BadValue,
    Launch,
    UsageError,
    _given,
    _has_gpu,
    _local,
    check_local,
    check_values,
    parse_bool,
    parse_key_values,
    usage,
    validation_engine,
)

logger = logging.getLogger("zerosearch.launch")

SERVER_KV_GIB = 0.5  # KV cache of a simulation server the launcher starts on CPU (VLLM_CPU_KVCACHE_SPACE overrides)
CPU_TOKEN_BUDGET = 2048  # tokens per micro-batch per worker on CPU (ppo_max_token_len_per_gpu)

# row-count micro-batches of the preset (configs/zerosearch.yaml, verl/trainer/config.py), sized per run by the launcher
MICRO_BATCHES = {"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8,
                 "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 8,
                 "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 8,
                 "critic.ppo_micro_batch_size_per_gpu": 4}

ALGOS: dict[str, list[str]] = {
    # the original scripts: GRPO / REINFORCE with a low-variance KL loss of 0.001; PPO with a critic and KL in reward
    "grpo": ["algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.use_kl_loss=true",
             "actor_rollout_ref.actor.kl_loss_coef=0.001", "actor_rollout_ref.actor.kl_loss_type=low_var_kl"],
    "reinforce": ["algorithm.adv_estimator=reinforce", "actor_rollout_ref.actor.use_kl_loss=true",
                  "actor_rollout_ref.actor.kl_loss_coef=0.001", "actor_rollout_ref.actor.kl_loss_type=low_var_kl"],
    "ppo": ["algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true", "algorithm.kl_ctrl.kl_coef=0.001",
            "actor_rollout_ref.actor.use_kl_loss=false"],
}


def parse_args(algo: str, argv: list[str]) -> Launch:
    if algo not in ALGOS:
        raise UsageError(f"unknown algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    values, passthrough, _ = parse_key_values(argv, KEYS)
    return Launch(algo, values, passthrough)


def _gpu_count() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def _model_name(path: str) -> str:
    return "smollm2-135m" if path.startswith("embedded") else Path(path.rstrip("/")).name


def build_overrides(launch: Launch, gpu: bool | None = None) -> list[str]:
    """KEY VALUE settings -> Hydra overrides for `verl.trainer.main_ppo --config-name zerosearch`."""
    v = dict(launch.values)
    gpu = _has_gpu() if gpu is None else gpu
    if v["DEVICE"] == "auto":
        v["DEVICE"] = "cuda" if gpu else "cpu"
    cpu = v["DEVICE"] == "cpu"
    auto = {
        "NUM_GPUS_PER_NODE": "1" if cpu else str(_gpu_count()),
        "TOTAL_STEPS": "20" if cpu else "203",
        "TRAIN_BATCH_SIZE": "8" if cpu else "512",
        "ROLLOUT_N": "4" if cpu else "5",
        "LR": "2e-6" if cpu else "1e-6",
    }
    for k, default in auto.items():
        if v[k] == "auto":
            v[k] = default
    if v["PRECISION"] == "auto":
        from verl.workers.fsdp_utils import cpu_has_native_bf16

        v["PRECISION"] = "bf16" if not cpu or cpu_has_native_bf16() else "fp32"
    if v["PRECISION"] not in ("fp32", "bf16"):
        raise BadValue(f"PRECISION must be auto, fp32 or bf16, got {v['PRECISION']!r}")
    for k in BOOL_KEYS:
        v[k] = "true" if parse_bool(v[k], k) else "false"
    v["LOG_LEVEL"] = v["LOG_LEVEL"].upper()
    if v["LOG_LEVEL"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise BadValue(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {launch.values['LOG_LEVEL']!r}")
    if v["SAVE_FREQ"] == "auto":  # a CPU step takes minutes: a kill must lose at most one
        v["SAVE_FREQ"] = "1" if cpu else v["TOTAL_STEPS"]
    if v["TEST_FREQ"] == "auto":
        v["TEST_FREQ"] = v["TOTAL_STEPS"]
    if launch.algo == "ppo" and launch.values["ROLLOUT_N"] == "auto":
        v["ROLLOUT_N"] = "1"
    check_values(launch.algo, v)
    data = v["DATA_PATH"].rstrip("/")
    search_engine = validation_engine(v)
    corpus = v["CORPUS_PATH"] if v["CORPUS_PATH"] != "auto" else f"{data}/corpus.jsonl"
    name = v["EXPERIMENT_NAME"]
    if name == "auto":  # like the original's <model>_<algo>_<search mode>_<simulator>_<start>_<end>
        name = "_".join([_model_name(v["MODEL_PATH"]), launch.algo, v["SEARCH_MODE"],
                         _model_name(v["SIMULATION_LLM"]), v["START_THRESHOLD"], v["END_THRESHOLD"]])
    ov = [
        f"trainer.device={v['DEVICE']}",
        f"trainer.n_gpus_per_node={int(v['NUM_GPUS_PER_NODE'])}",
        f"trainer.nnodes={int(v['NNODES'])}",
        f"trainer.total_training_steps={int(v['TOTAL_STEPS'])}",
        f"trainer.project_name={v['WANDB_PROJECT']}",
        f"trainer.experiment_name={name}",
        f"trainer.save_freq={int(v['SAVE_FREQ'])}",
        f"trainer.save_interval_minutes={float(v['SAVE_MINUTES'])}",
        f"trainer.test_freq={int(v['TEST_FREQ'])}",
        f"trainer.val_before_train={v['VAL_BEFORE_TRAIN']}",
        f"trainer.logger=[{v['LOGGER']}]",
        f"trainer.log_level={v['LOG_LEVEL']}",
        f"trainer.verbose={v['VERBOSE']}",
        f"actor_rollout_ref.model.path={v['MODEL_PATH']}",
        f"critic.model.path={v['MODEL_PATH']}",
        f"actor_rollout_ref.rollout.name={v['ROLLOUT']}",
        f"actor_rollout_ref.rollout.n={int(v['ROLLOUT_N'])}",
        f"actor_rollout_ref.actor.optim.lr={float(v['LR'])}",
        f"actor_rollout_ref.actor.fsdp_config.param_dtype={v['PRECISION']}",
        f"critic.fsdp_config.param_dtype={v['PRECISION']}",
        f"data.train_batch_size={int(v['TRAIN_BATCH_SIZE'])}",
        f"data.train_files=[{data}/train.parquet]",
        f"data.val_files=[{data}/test.parquet]",
        f"search.mode={v['SEARCH_MODE']}",
        f"search.val_mode={search_engine}",
        f"search.start_threshold={float(v['START_THRESHOLD'])}",
        f"search.end_threshold={float(v['END_THRESHOLD'])}",
        f"search.max_turns={int(v['MAX_TURNS'])}",
        f"search.topk={int(v['TOPK'])}",
    ]
    # backend keys only where a backend of the run reads them (the rollout refuses keys that do nothing)
    from zerosearch.search import registry

    read = {k for mode in (v["SEARCH_MODE"], search_engine) for k in registry.backend_spec(mode).keys}
    backend = {"simulation_llm": v["SIMULATION_LLM"], "ips": f"[{v['IP']}]", "port": int(v["PORT"]),
               "retriever_url": v["RETRIEVER_URL"], "corpus_path": corpus}
    ov += [f"search.{key}={value}" for key, value in backend.items() if key in read]
    if int(v["NNODES"]) > 1 and not any(o.startswith("trainer.ray_address=") for o in launch.passthrough):
        ov.append("trainer.ray_address=auto")  # several nodes: the cluster started with `ray start` (README)
    if v["CHECKPOINT_DIR"] != "auto":
        ov.append(f"trainer.default_local_dir={v['CHECKPOINT_DIR']}")
    # The batch shape must stay divisible: mini-batch = whole batch (one update per step, as on CPU), and each
    # row-count micro-batch (used when use_dynamic_bsz is off) the largest divisor of a worker's share of it that is
    # at most the preset's size.
    ov.append(f"actor_rollout_ref.actor.ppo_mini_batch_size={int(v['TRAIN_BATCH_SIZE'])}")
    per_worker = int(v["TRAIN_BATCH_SIZE"]) * int(v["ROLLOUT_N"]) // (int(v["NUM_GPUS_PER_NODE"]) * int(v["NNODES"]))
    for key, preset in MICRO_BATCHES.items():
        size = max(d for d in range(1, min(preset, per_worker) + 1) if per_worker % d == 0)
        if size != preset:
            ov.append(f"{key}={size}")
    # Token-budget micro-batches (the trainer's memory plan lowers the budgets further when the machine needs it).
    ov += ["actor_rollout_ref.actor.use_dynamic_bsz=true", "critic.use_dynamic_bsz=true"]
    if cpu:  # about two rows of the embedded setup (512 + 320 tokens) per micro-batch, decoder layers recomputed in
        # backward: the fp32 update of 8 x 832 tokens peaks at 0.30x the RSS of one 8-row micro-batch without them, in
        # ~the same time (benchmarks/bench_memory.py; checkpointing alone costs ~12% of the update)
        ov += [f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={CPU_TOKEN_BUDGET}",
               f"critic.ppo_max_token_len_per_gpu={CPU_TOKEN_BUDGET}",
               "actor_rollout_ref.model.enable_gradient_checkpointing=true",
               "critic.model.enable_gradient_checkpointing=true"]
    return ALGOS[launch.algo] + ov + launch.passthrough


def run_dir(overrides: list[str]) -> Path:
    """The trainer's `default_local_dir` (checkpoints, and logs/ with train.log) for these overrides, absolute."""
    last: dict[str, str] = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        last[key] = value
    d = last.get("trainer.default_local_dir") or \
        f"checkpoints/{last.get('trainer.project_name', 'zerosearch')}/{last.get('trainer.experiment_name', 'run')}"
    return Path(d) if Path(d).is_absolute() else ROOT / d


def _simulator_needed(v: dict[str, str]) -> bool:
    from zerosearch.search import registry

    return registry.is_simulated(v["SEARCH_MODE"])


def _local_model(path: str) -> bool:
    return path.startswith("embedded") or Path(path).is_dir()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m zerosearch.launch ALGO [KEY VALUE]...", file=sys.stderr)
        return 2
    algo = argv.pop(0)
    try:
        launch = parse_args(algo, argv)
        overrides = build_overrides(launch)
    except BadValue as e:  # one line: the key and what it takes
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (UsageError, ValueError) as e:
        if str(e) != "help":
            print(f"error: {e}", file=sys.stderr)
        print(usage(algo if algo in ALGOS else "grpo"), file=sys.stderr)
        return 0 if str(e) == "help" else 2
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", "--config-name", "zerosearch", *overrides]
    problems = check_local(launch)
    if parse_bool(launch.values["DRY_RUN"], "DRY_RUN"):
        print(" ".join(cmd))
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        return _print_placement(overrides)
    if not problems and _simulator_needed(launch.values) and not _can_serve(launch.values) and \
            not simulator_answers(launch.values):
        problems.append(f"no simulation server answers at {launch.values['IP']}:{launch.values['PORT']} (SEARCH_MODE "
                        f"{launch.values['SEARCH_MODE']}): start one with scripts/launch_simulation_server.sh, or set "
                        "SIMULATION_LLM to a local model dir (or 'embedded') to serve one on 127.0.0.1")
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    from verl.utils import reaper

    reaper.guard()  # SIGTERM / SIGHUP stop what this starts, like Ctrl-C; a reaper covers a SIGKILL of this process
    from verl.utils.console import setup_run_logging

    logs = run_dir(overrides) / "logs"  # the run log: this launcher's lines, then the trainer's
    run_log = setup_run_logging(logs, launch.values["LOG_LEVEL"], parse_bool(launch.values["VERBOSE"], "VERBOSE"),
                                redirect_stdout=False)
    embedded_missing = not (ROOT / EMBEDDED_DATA / "train.parquet").exists()
    if launch.values["DATA_PATH"].rstrip("/") == EMBEDDED_DATA and embedded_missing:
        with open(run_log.path, "a") as out:
            made = subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(ROOT / EMBEDDED_DATA)],
                                  stdout=out, stderr=subprocess.STDOUT)
        if made.returncode != 0:
            print(f"error: generating the embedded world failed (exit {made.returncode}); see {run_log.path}",
                  file=sys.stderr)
            return 1
    server = None
    try:
        server = _ensure_simulator(launch.values, logs / "simulation_server.log")
        if server is not None and not any(o.startswith("trainer.colocated_server_gb=") for o in overrides):
            gb = _server_gb(server, launch.values["SIMULATION_LLM"], "trainer.device=cpu" in overrides)
            cmd.append(f"trainer.colocated_server_gb={gb:.2f}")
        # the trainer gets SIGTERM if this process dies without stopping it (it then shuts its Ray cluster down)
        proc = subprocess.Popen(cmd, cwd=ROOT, preexec_fn=reaper.pdeathsig_preexec(signal.SIGTERM))
        try:
            return _trainer_exit(proc.wait(), overrides, run_log.path)
        except KeyboardInterrupt as e:  # Ctrl-C (the trainer got it too), SIGTERM or SIGHUP (reaper.Terminated)
            return _stop_trainer(proc, e)
    except KeyboardInterrupt as e:  # while the simulation server was starting (it is stopped by now)
        print(f"stopped ({e or 'SIGINT'}) while starting the simulation server", file=sys.stderr)
        return reaper.exit_code(e)
    finally:
        if server is not None:
            server.stop()


def _trainer_exit(rc: int, overrides: list[str], log_path: Path) -> int:
    """The trainer's exit code as the shell's (128 + signal when a signal killed it, which the trainer cannot report
    itself: say so, and how to resume)."""
    if rc >= 0:
        return rc
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    why = " (the kernel's OOM killer, or kill -9)" if -rc == signal.SIGKILL else ""
    print(f"error: the trainer was killed by {name}{why}. Run the same command again to resume from the last complete "
          f"checkpoint in {run_dir(overrides)}; the run log is {log_path}", file=sys.stderr)
    return 128 - rc


def _print_placement(overrides: list[str]) -> int:
    """The dry run's second part: the trainer's config validated and its placement (with trainer.ray_address, as
    that cluster places the ranks), or the config error (exit 2)."""
    from verl.trainer.config import ConfigError
    from verl.trainer.main_ppo import compose_config, placement_report

    try:
        cfg = compose_config("zerosearch", overrides)
        lines = placement_report(cfg)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _stop_trainer(proc: subprocess.Popen, exc: BaseException, grace_s: float = 60.0) -> int:
    """Pass the signal on to the trainer, give it `grace_s` to stop its workers and Ray, then kill it."""
    from verl.utils import reaper

    signum = getattr(exc, "signum", signal.SIGINT)
    try:
        if signum == signal.SIGINT:  # Ctrl-C reached the trainer too (same process group): let it clean up first
            try:
                proc.wait(timeout=15)
                return reaper.exit_code(exc)
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signum)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
    return reaper.exit_code(exc)


def _server_gb(server, model: str, cpu: bool) -> float:
    """RAM of the simulation server this launcher started, for the trainer's memory plan: its processes' RSS now,
    or the plan's estimate of a vLLM server (verl.utils.memory_plan.vllm_server_bytes) when that is larger."""
    import psutil

    from verl.utils.memory_plan import GB, model_dims, vllm_server_bytes

    try:
        root = psutil.Process(server.process.pid)
        measured = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        measured = 0
    dims = model_dims(model)
    kv_gb = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", SERVER_KV_GIB)) if cpu else 0.0
    planned = vllm_server_bytes(dims, w=4 if cpu else 2, kv_gb=kv_gb) if dims is not None else 0.0
    return max(measured, planned) / GB


def _ips(v: dict[str, str]) -> list[str]:
    return [ip.strip() for ip in v["IP"].split(",") if ip.strip()]


def simulator_answers(v: dict[str, str]) -> bool:
    """A simulation server answers at every one of `IP` (comma-separated) on `PORT`."""
    from zerosearch.search.server_launch import is_healthy

    return all(is_healthy(f"http://{ip}:{int(v['PORT'])}") for ip in _ips(v))


def _can_serve(v: dict[str, str]) -> bool:
    """This launcher can start the simulation server itself: a local model, on this machine."""
    return _local_model(v["SIMULATION_LLM"]) and all(ip in ("127.0.0.1", "localhost") for ip in _ips(v))


def _ensure_simulator(v: dict[str, str], log_path: Path):
    """Start a local simulation server (output: `log_path`) when the mode needs one and none answers at IP:PORT."""
    if not _simulator_needed(v):
        return None
    from zerosearch.search.server_launch import start_simulation_server

    port = int(v["PORT"])
    if simulator_answers(v):
        return None
    if not _can_serve(v):
        raise SystemExit(f"no simulation server answers at {v['IP']}:{port}; start one with "
                         "scripts/launch_simulation_server.sh or set SIMULATION_LLM to a local model")
    logger.info("no simulator at 127.0.0.1:%d: serving %s for this run", port, v["SIMULATION_LLM"])
    # 0.5 GiB of KV holds ~11k fp32 tokens of the embedded model: 16 concurrent searches of ~500 tokens fit
    return start_simulation_server(v["SIMULATION_LLM"], port=port, served_name=v["SIMULATION_LLM"], log_path=log_path,
                                   kvcache_space_gib=SERVER_KV_GIB)


if __name__ == "__main__":
    sys.exit(main())
