"""The train scripts' command line: `bash train_grpo.sh KEY VALUE ... [a.b=c ...]`.

Accepts the original ZeroSearch command lines unchanged, but by key instead of position: any order,
every key optional with a default (embedded model, embedded world, prompted simulator, CPU when there
is no GPU), unknown keys and missing values rejected (exit 2) with the list of valid keys, and anything
of the form `a.b=c` passed through to Hydra. When the search mode is a simulation and nothing answers
at IP:PORT, a local simulation model is served for the run and stopped on exit (Ctrl-C included).
Boolean keys take true/false, 1/0 or yes/no (any case); anything else exits 2. The run's log is
`<checkpoint dir>/logs/train.log` (this launcher's lines, then the trainer's and its workers'), the simulation
server's `simulation_server.log` next to it; the console stays quiet unless LOG_LEVEL / VERBOSE say otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("zerosearch.launch")

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DATA = "data/embedded"
SERVER_KV_GIB = 0.5  # KV cache of a simulation server the launcher starts on CPU (VLLM_CPU_KVCACHE_SPACE overrides)
CPU_TOKEN_BUDGET = 2048  # tokens per micro-batch per worker on CPU (ppo_max_token_len_per_gpu)

# key -> (default, help). Defaults are the embedded CPU setup; GPU users pass the original values.
KEYS: dict[str, tuple[str, str]] = {
    # the original ZeroSearch keys
    "NUM_GPUS_PER_NODE": ("auto", "workers per node (GPUs; on CPU: processes, auto = 1)"),
    "NNODES": ("1", "nodes of the Ray cluster (> 1: joins the running cluster, trainer.ray_address=auto; see README)"),
    "MODEL_PATH": ("embedded", "policy model: HF dir, hub id, or 'embedded'"),
    "DATA_PATH": (EMBEDDED_DATA, "dir with train.parquet and test.parquet"),
    "TOTAL_STEPS": ("auto", "training steps (auto: 203 on GPU as the original, 20 on CPU)"),
    "IP": ("127.0.0.1", "simulation server IP(s), comma-separated for load balancing"),
    "SEARCH_MODE": ("simulate_prompt", "simulate_prompt | simulate_sft | google | wiki | local"),
    "SIMULATION_LLM": ("embedded", "simulation model: served name, or a local dir / 'embedded' to serve"),
    "START_THRESHOLD": ("0.0", "noise probability at step 0"),
    "END_THRESHOLD": ("0.5", "noise probability at the last step"),
    "SEARCH_ENGINE": ("auto", "validation engine: local | wiki | google (auto: local BM25 on the embedded world)"),
    "MAX_TURNS": ("2", "search turns before the final answer turn"),
    "TOPK": ("3", "documents per search"),
    # ours
    "PORT": ("6001", "simulation server port"),
    "EXPERIMENT_NAME": ("auto", "run name (auto: like the original's)"),
    "WANDB_PROJECT": ("zerosearch", "W&B project (offline without WANDB_API_KEY)"),
    "SAVE_FREQ": ("auto", "checkpoint every N steps and at the end (auto: every step on CPU, at the end on GPU; "
                          "-1: never)"),
    "SAVE_MINUTES": ("0", "save at a SAVE_FREQ step only if this many minutes passed since the last save "
                          "(whichever is rarer; 0: no time condition; the last step always saves)"),
    "TEST_FREQ": ("auto", "validate every N steps and at the end (auto: at the end; -1: never)"),
    "VAL_BEFORE_TRAIN": ("true", "validate before the first step"),
    "DEVICE": ("auto", "auto | cpu | cuda"),
    "ROLLOUT": ("vllm", "rollout engine: vllm | hf"),
    "PRECISION": ("auto", "training compute dtype: auto | fp32 | bf16 (auto: bf16 on CUDA and on CPUs with "
                          "native bf16, i.e. avx512_bf16 / AMX; fp32 elsewhere)"),
    "TRAIN_BATCH_SIZE": ("auto", "prompts per step"),
    "ROLLOUT_N": ("auto", "samples per prompt"),
    "LR": ("auto", "actor learning rate"),
    "LOGGER": ("console,jsonl,wandb", "comma list of console, jsonl, wandb"),
    "CHECKPOINT_DIR": ("auto", "checkpoint root (auto: checkpoints/<project>/<experiment>)"),
    "CORPUS_PATH": ("auto", "corpus JSONL for the local BM25 engine (auto: DATA_PATH/corpus.jsonl)"),
    "RETRIEVER_URL": ("http://127.0.0.1:8000", "wiki retriever server"),
    "DRY_RUN": ("false", "print the trainer command and exit"),
    "LOG_LEVEL": ("WARNING", "console level: DEBUG | INFO | WARNING | ERROR (INFO and DEBUG show library output; "
                             "<checkpoint dir>/logs/train.log has everything at INFO and above either way)"),
    "VERBOSE": ("false", "true: everything on the console (vLLM, Ray, HF output and warnings), as without the run log"),
}
BOOL_KEYS = ("VAL_BEFORE_TRAIN", "DRY_RUN", "VERBOSE")
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")

ALGOS: dict[str, list[str]] = {
    # the original scripts: GRPO / REINFORCE with a low-variance KL loss of 0.001; PPO with a critic and KL in reward
    "grpo": ["algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.use_kl_loss=true",
             "actor_rollout_ref.actor.kl_loss_coef=0.001", "actor_rollout_ref.actor.kl_loss_type=low_var_kl"],
    "reinforce": ["algorithm.adv_estimator=reinforce", "actor_rollout_ref.actor.use_kl_loss=true",
                  "actor_rollout_ref.actor.kl_loss_coef=0.001", "actor_rollout_ref.actor.kl_loss_type=low_var_kl"],
    "ppo": ["algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true", "algorithm.kl_ctrl.kl_coef=0.001",
            "actor_rollout_ref.actor.use_kl_loss=false"],
}


class UsageError(Exception):
    pass


@dataclass
class Launch:
    algo: str
    values: dict[str, str]
    passthrough: list[str] = field(default_factory=list)


def usage(algo: str) -> str:
    lines = [f"usage: bash train_{algo}.sh [KEY VALUE]... [hydra.key=value]...", "valid keys:"]
    lines += [f"  {k:<18} default {v[0]!r:<24} {v[1]}" for k, v in KEYS.items()]
    return "\n".join(lines)


def parse_key_values(argv: list[str], keys: dict[str, tuple[str, str]],
                     allow_words: bool = False) -> tuple[dict[str, str], list[str], list[str]]:
    """`KEY VALUE` pairs and `a.b=c` overrides -> (every key's value, its default when not given; the overrides;
    other words). Without `allow_words` any other word is an unknown key and -h / --help is UsageError("help"); with
    it (a command that also takes a question), only an upper-case word is taken for a mistyped key, and words
    starting with '-' are never overrides. A key without a value is a UsageError."""
    values, overrides, words, i = {}, [], [], 0
    while i < len(argv):
        tok = argv[i]
        if "=" in tok and not tok.startswith("=") and not (allow_words and tok.startswith("-")):
            overrides.append(tok)
            i += 1
        elif not allow_words and tok in ("-h", "--help"):
            raise UsageError("help")
        elif tok in keys:
            if i + 1 >= len(argv) or argv[i + 1] in keys:
                raise UsageError(f"key {tok} has no value")
            values[tok] = argv[i + 1]
            i += 2
        elif not allow_words or (tok.isupper() and tok.replace("_", "").isalnum() and len(tok) > 1):
            raise UsageError(f"unknown key {tok!r}")
        else:
            words.append(tok)
            i += 1
    return {k: values.get(k, default) for k, (default, _) in keys.items()}, overrides, words


def parse_args(algo: str, argv: list[str]) -> Launch:
    if algo not in ALGOS:
        raise UsageError(f"unknown algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    values, passthrough, _ = parse_key_values(argv, KEYS)
    return Launch(algo, values, passthrough)


def parse_bool(value: str, key: str) -> bool:
    """true/false, 1/0, yes/no (any case); anything else is a UsageError naming the key."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise UsageError(f"{key} expects true/false (or 1/0, yes/no), got {value!r}")


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _gpu_count() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def _num(v: dict[str, str], key: str, kind: type) -> None:
    try:
        kind(v[key])
    except ValueError:
        raise UsageError(f"{key} expects {'an integer' if kind is int else 'a number'}, got {v[key]!r}") from None


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
        raise UsageError(f"PRECISION must be auto, fp32 or bf16, got {v['PRECISION']!r}")
    for k in BOOL_KEYS:
        v[k] = "true" if parse_bool(v[k], k) else "false"
    v["LOG_LEVEL"] = v["LOG_LEVEL"].upper()
    if v["LOG_LEVEL"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {launch.values['LOG_LEVEL']!r}")
    if v["SAVE_FREQ"] == "auto":  # a CPU step takes minutes: a kill must lose at most one
        v["SAVE_FREQ"] = "1" if cpu else v["TOTAL_STEPS"]
    if v["TEST_FREQ"] == "auto":
        v["TEST_FREQ"] = v["TOTAL_STEPS"]
    for k in ("NUM_GPUS_PER_NODE", "NNODES", "TOTAL_STEPS", "SAVE_FREQ", "TEST_FREQ", "TRAIN_BATCH_SIZE", "ROLLOUT_N",
              "MAX_TURNS", "TOPK", "PORT"):
        _num(v, k, int)
    for k in ("START_THRESHOLD", "END_THRESHOLD", "LR", "SAVE_MINUTES"):
        _num(v, k, float)
    if launch.algo == "ppo" and launch.values["ROLLOUT_N"] == "auto":
        v["ROLLOUT_N"] = "1"
    data = v["DATA_PATH"].rstrip("/")
    search_engine = v["SEARCH_ENGINE"]
    if search_engine == "auto":
        search_engine = "local" if Path(data).resolve() == (ROOT / EMBEDDED_DATA).resolve() or \
            (Path(data) / "corpus.jsonl").exists() else "google"
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
    # The batch shape must stay divisible: mini-batch = whole batch (one update per step, as on CPU).
    ov.append(f"actor_rollout_ref.actor.ppo_mini_batch_size={int(v['TRAIN_BATCH_SIZE'])}")
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
    except (UsageError, ValueError) as e:
        if str(e) != "help":
            print(f"error: {e}", file=sys.stderr)
        print(usage(algo if algo in ALGOS else "grpo"), file=sys.stderr)
        return 0 if str(e) == "help" else 2
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", "--config-name", "zerosearch", *overrides]
    if parse_bool(launch.values["DRY_RUN"], "DRY_RUN"):
        print(" ".join(cmd))
        return _print_placement(overrides)
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
            return proc.wait()
        except KeyboardInterrupt as e:  # Ctrl-C (the trainer got it too), SIGTERM or SIGHUP (reaper.Terminated)
            return _stop_trainer(proc, e)
    except KeyboardInterrupt as e:  # while the simulation server was starting (it is stopped by now)
        print(f"stopped ({e or 'SIGINT'}) while starting the simulation server", file=sys.stderr)
        return reaper.exit_code(e)
    finally:
        if server is not None:
            server.stop()


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


def _ensure_simulator(v: dict[str, str], log_path: Path):
    """Start a local simulation server (output: `log_path`) when the mode needs one and none answers at IP:PORT."""
    if not _simulator_needed(v):
        return None
    from zerosearch.search.server_launch import start_simulation_server

    port = int(v["PORT"])
    if simulator_answers(v):
        return None
    if not _local_model(v["SIMULATION_LLM"]) or any(ip not in ("127.0.0.1", "localhost") for ip in _ips(v)):
        raise SystemExit(f"no simulation server answers at {v['IP']}:{port}; start one with "
                         "scripts/launch_simulation_server.sh or set SIMULATION_LLM to a local model")
    logger.info("no simulator at 127.0.0.1:%d: serving %s for this run", port, v["SIMULATION_LLM"])
    # 0.5 GiB of KV holds ~11k fp32 tokens of the embedded model: 16 concurrent searches of ~500 tokens fit
    return start_simulation_server(v["SIMULATION_LLM"], port=port, served_name=v["SIMULATION_LLM"], log_path=log_path,
                                   kvcache_space_gib=SERVER_KV_GIB)


if __name__ == "__main__":
    sys.exit(main())
