"""What `zerosearch.eval` and `zerosearch.infer` share: their `KEY VALUE` command line, and the model, engine, search
backend, rollout and reward they build from it.

The keys are the train scripts' (`MODEL_PATH`, `DATA_PATH`, `SEARCH_ENGINE`, `MAX_TURNS`, `TOPK`, ...) and map onto
the trainer's config (`configs/zerosearch.yaml` composed with Hydra overrides, extra `a.b=c` passed through), so a
checkpoint is evaluated with the lengths, prompt handling, stop rules and reward it was trained with. The rollout
and reward are the trainer's components (`make_search_rollout_fn`, `make_reward_fn`) called as in validation
(`validate=True`: no noise), and the engine is the trainer's (`build_rollout_engine`), here in this process.

`MODEL_PATH` is an HF directory, a hub id, `embedded`, a checkpoint step directory (`.../global_step_N`, its
`huggingface/` export) or a training run directory (its latest complete step).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from verl.trainer.config import ConfigError, PPOConfig
from zerosearch.launch import UsageError, parse_bool, parse_key_values
from zerosearch.launch_args import _num, check_shared
from zerosearch.search.registry import is_simulated, modes

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DATA = "data/embedded"

# key -> (default, help); both commands take these, `zerosearch.eval` adds its own (EVAL_KEYS)
COMMON_KEYS: dict[str, tuple[str, str]] = {
    "MODEL_PATH": ("embedded", "policy: HF dir, hub id, 'embedded', a checkpoint step dir or a training run dir "
                               "(its latest complete step)"),
    "SEARCH_ENGINE": ("auto", f"{' | '.join(modes())} (auto: local BM25 when the data dir has a corpus.jsonl, "
                              "else google)"),
    "MAX_TURNS": ("2", "search turns before the final answer turn (as in training)"),
    "TOPK": ("3", "documents per search"),
    "CORPUS_PATH": ("auto", "corpus JSONL of the local engine (auto: <data dir>/corpus.jsonl)"),
    "RETRIEVER_URL": ("http://127.0.0.1:8000", "wiki retriever server"),
    "SIMULATION_LLM": ("embedded", "simulate_*: served model name, or a local dir / 'embedded' to serve"),
    "IP": ("127.0.0.1", "simulate_*: simulation server IP(s), comma-separated"),
    "PORT": ("6001", "simulate_*: simulation server port"),
    "ROLLOUT": ("vllm", "engine: vllm (hf where vLLM is not installed) | hf (Hugging Face generate)"),
    "DEVICE": ("auto", "auto | cpu | cuda"),
    "DTYPE": ("auto", "engine dtype: auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16"),
    "TEMPERATURE": ("auto", "sampling temperature (auto: 0, greedy, for one sample; 1.0 for N > 1)"),
    "TOP_P": ("1.0", "nucleus sampling"),
    "SEED": ("1", "sampling seed"),
    "LOG_LEVEL": ("WARNING", "console level: DEBUG | INFO | WARNING | ERROR (the log file has INFO and above)"),
    "VERBOSE": ("false", "true: engine and library output on the console too"),
}


def parse_keys(argv: list[str], keys: dict[str, tuple[str, str]]) -> tuple[dict[str, str], list[str], list[str]]:
    """The train scripts' parser (`zerosearch.launch.parse_key_values`), with positional words allowed (a question):
    (values with defaults, overrides, words)."""
    return parse_key_values(argv, keys, allow_words=True)


def usage(prog: str, keys: dict[str, tuple[str, str]], extra: str = "") -> str:
    lines = [f"usage: {prog} [KEY VALUE]... [a.b=c]...{extra}", "keys:"]
    lines += [f"  {k:<15} default {v[0]!r:<24} {v[1]}" for k, v in keys.items()]
    return "\n".join(lines)


def check_values(v: dict[str, str]) -> None:
    """Every key's value on its own, as the train scripts check theirs (`zerosearch.launch_args.check_shared` for
    the keys they share), before a model loads; a UsageError naming the key and what it takes."""
    check_shared(v, COMMON_KEYS)
    from verl.workers.rollout import ROLLOUT_DTYPES

    if v["DTYPE"] not in ROLLOUT_DTYPES:
        raise UsageError(f"DTYPE must be one of {', '.join(ROLLOUT_DTYPES)}, got {v['DTYPE']!r}")
    if v["TEMPERATURE"] != "auto":
        _num(v, "TEMPERATURE", float, 0, what="0: greedy")
    _num(v, "TOP_P", float, 0, 1, what="nucleus sampling")
    if float(v["TOP_P"]) == 0:
        raise UsageError(f"TOP_P must be in (0, 1] (1: no cut), got {v['TOP_P']!r}")
    _num(v, "SEED", int)
    parse_bool(v["VERBOSE"], "VERBOSE")


# ---------------------------------------------------------------------------------------------------------- model
def resolve_model(path: str) -> tuple[str, str]:
    """MODEL_PATH -> (directory or hub id to load, what it is, for the summary)."""
    from verl.utils import checkpoint as ckpt
    from verl.utils.models import is_embedded, resolve_model_path

    if is_embedded(path):
        return resolve_model_path(path), "embedded SmolLM2-135M-Instruct"
    p = Path(path).expanduser()
    if not p.exists():
        if p.is_absolute() or path.startswith(".") or path.count("/") != 1:
            raise UsageError(f"MODEL_PATH {path!r}: no such directory (give an HF dir, a hub id like org/name, "
                             "'embedded', or a checkpoint dir)")
        return path, "hub id"
    if (p / "config.json").exists():
        return str(p), "HF directory"
    if (p / "huggingface" / "config.json").exists():
        return str(p / "huggingface"), f"checkpoint {p.name}"
    try:
        step = ckpt.latest_step(p)
    except RuntimeError as e:
        raise UsageError(f"MODEL_PATH {path!r}: {e}") from None
    if step is not None and (ckpt.step_dir(p, step) / "huggingface" / "config.json").exists():
        return str(ckpt.step_dir(p, step) / "huggingface"), f"checkpoint global_step_{step} of run {p.name}"
    raise UsageError(f"MODEL_PATH {path!r} is a directory with no config.json, no huggingface/ export and no "
                     "complete checkpoint (latest_checkpointed_iteration.txt)")


# ---------------------------------------------------------------------------------------------------------- config
@dataclass
class Setup:
    """A validated command line: the trainer config it maps to and the settings the summary records."""

    cfg: PPOConfig
    values: dict[str, str]
    model_dir: str
    model_kind: str
    engine: str  # the search engine
    device: str
    n: int
    temperature: float
    data_files: list[str]


def search_engine(value: str, data_dir: Path | None) -> str:
    if value == "auto":
        embedded = data_dir is not None and data_dir.resolve() == (ROOT / EMBEDDED_DATA).resolve()
        return "local" if embedded or (data_dir is not None and (data_dir / "corpus.jsonl").exists()) else "google"
    if value not in modes():
        raise UsageError(f"SEARCH_ENGINE must be one of {', '.join(modes())} or auto, got {value!r}")
    return value


def build_setup(v: dict[str, str], overrides: list[str], data_files: list[str], data_dir: Path | None,
                n: int = 1, batch_size: int = 64) -> Setup:
    """Keys -> the trainer config (`configs/zerosearch.yaml` + overrides) and the settings of this command; the
    values were checked by `check_values` first."""
    from verl.trainer.main_ppo import compose_config, resolve_device

    model_dir, kind = resolve_model(v["MODEL_PATH"])
    engine = search_engine(v["SEARCH_ENGINE"], data_dir)
    rollout = v["ROLLOUT"]
    if rollout == "vllm" and importlib.util.find_spec("vllm") is None:
        logger.warning("vLLM is not installed here: using Hugging Face generate (ROLLOUT hf)")
        rollout = "hf"
    temperature = (0.0 if n == 1 else 1.0) if v["TEMPERATURE"] == "auto" else float(v["TEMPERATURE"])
    if n > 1 and temperature == 0:
        raise UsageError(f"N {n} with TEMPERATURE 0 gives {n} identical greedy answers: set TEMPERATURE > 0 or N 1")
    max_turns, topk, port, seed, top_p = (int(v["MAX_TURNS"]), int(v["TOPK"]), int(v["PORT"]), int(v["SEED"]),
                                          float(v["TOP_P"]))
    corpus = v["CORPUS_PATH"]
    if corpus == "auto":
        corpus = str((data_dir or ROOT / EMBEDDED_DATA) / "corpus.jsonl")
    ov = [
        f"trainer.device={v['DEVICE']}",
        f"trainer.seed={seed}",
        f"actor_rollout_ref.model.path={model_dir}",
        f"actor_rollout_ref.rollout.name={rollout}",
        f"actor_rollout_ref.rollout.dtype={v['DTYPE']}",
        f"actor_rollout_ref.rollout.val_kwargs.n={n}",
        f"actor_rollout_ref.rollout.val_kwargs.do_sample={str(temperature > 0).lower()}",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={temperature}",
        f"actor_rollout_ref.rollout.val_kwargs.top_p={top_p}",
        f"data.val_files=[{','.join(data_files)}]" if data_files else "data.val_files=[]",
        f"data.val_batch_size={batch_size}",
        f"search.mode={engine}",
        f"search.val_mode={engine}",
        f"search.max_turns={max_turns}",
        f"search.topk={topk}",
        f"search.retriever_url={v['RETRIEVER_URL']}",
        f"search.simulation_llm={v['SIMULATION_LLM']}",
        f"search.ips=[{v['IP']}]",
        f"search.port={port}",
    ]
    if engine == "local":  # the one engine that reads a corpus (the search section refuses a key that does nothing)
        ov.append(f"search.corpus_path={corpus}")
    try:
        cfg = compose_config("zerosearch", ov + overrides)
        device = resolve_device(cfg.trainer.device)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # Hydra: a malformed or unknown override
        raise UsageError(f"bad override: {e}".splitlines()[0]) from None
    return Setup(cfg, dict(v), model_dir, kind, engine, device, n, temperature, list(data_files))


TRAINED_WITH = (("search", "max_turns", "MAX_TURNS"), ("search", "topk", "TOPK"),
                ("search", "observation_format", "search.observation_format"),
                ("data", "max_response_length", "data.max_response_length"),
                ("data", "max_obs_length", "data.max_obs_length"),
                ("data", "assistant_prefix", "data.assistant_prefix"))


def training_mismatches(setup: Setup) -> list[str]:
    """For a training checkpoint: the rollout settings its run trained with (`<run>/logs/config.json`) that this
    command sets otherwise, the usual reason a reproduction falls short. Empty for other models."""
    import json

    d = Path(setup.model_dir)
    if not (d.name == "huggingface" and d.parent.name.startswith("global_step_")):
        return []
    saved = d.parent.parent / "logs" / "config.json"
    try:
        trained = json.loads(saved.read_text())
    except (OSError, ValueError):
        return []
    from zerosearch.rollout.factory import config_section

    mine = {"search": config_section(setup.cfg, "search"), "data": dataclasses.asdict(setup.cfg.data)}
    out = []
    for section, key, shown in TRAINED_WITH:
        was, now = (trained.get(section) or {}).get(key), mine[section].get(key)
        if was is not None and now is not None and was != now:
            out.append(f"{shown} {now!r} (trained with {was!r})")
    return out


# ---------------------------------------------------------------------------------------------------------- parts
@dataclass
class Parts:
    """What a run needs: tokenizer, engine, search backend, and the trainer's rollout and reward functions."""

    tokenizer: object
    engine: object
    backend: object
    rollout_fn: object
    reward_fn: object
    server: object | None = None  # a simulation server started for this command

    def close(self) -> None:
        for closer in (getattr(self.backend, "close", None), getattr(self.engine, "close", None),
                       getattr(self.server, "stop", None)):
            if closer is not None:
                try:
                    closer()
                except Exception as e:  # noqa: BLE001 - closing must not hide the run's own result
                    logger.warning("closing: %s", e)


def build_search(setup: Setup, server_log: Path):
    """The evaluation's search backend (`search.val_mode`, no noise), and a simulation server if this command had
    to start one (`SEARCH_ENGINE simulate_*` with nothing answering at IP:PORT)."""
    from zerosearch import launch
    from zerosearch.rollout.factory import val_search_config
    from zerosearch.search import build_search_backend

    server = None
    if is_simulated(setup.engine):
        server = launch._ensure_simulator({**setup.values, "SEARCH_MODE": setup.engine}, server_log)
    try:  # search.val_mode is the engine: build_setup sets it
        backend = build_search_backend(val_search_config(setup.cfg))
    except BaseException:
        if server is not None:
            server.stop()
        raise
    return backend, server


def build_engine(setup: Setup):
    """The trainer's rollout engine, in this process (vLLM spawns its engine process; HF runs here)."""
    from verl.workers.rollout import engine_from_config

    r = setup.cfg.actor_rollout_ref.rollout
    if r.name == "vllm" and setup.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(r.kv_cache_space_gb))
    return engine_from_config(setup.cfg, setup.model_dir, device=setup.device, seed=setup.cfg.trainer.seed,
                              cpu_threads=os.cpu_count() if setup.device == "cpu" else None)


def build_parts(setup: Setup, server_log: Path) -> Parts:
    from transformers import AutoTokenizer

    from zerosearch.reward_fn import make_reward_fn
    from zerosearch.rollout.factory import make_search_rollout_fn

    try:
        tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    except OSError as e:
        msg = f"MODEL_PATH {setup.values['MODEL_PATH']!r}: cannot load a tokenizer ({e})".splitlines()[0]
        raise UsageError(msg) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    backend, server = build_search(setup, server_log)
    try:
        engine = build_engine(setup)
    except BaseException:
        backend.close()
        if server is not None:
            server.stop()
        raise
    # one backend for both managers (validate=True plays the validation one): built once, closed once, by Parts
    rollout_fn = make_search_rollout_fn(setup.cfg, tokenizer, backend=backend, val_backend=backend)
    reward_fn = make_reward_fn(setup.cfg, tokenizer)
    return Parts(tokenizer, engine, backend, rollout_fn, reward_fn, server)


def settings_record(setup: Setup) -> dict:
    """The settings that decide the results (a resumed evaluation must match them), for the summary. No secrets: the
    search section goes through `SearchConfig.to_dict`, which leaves the SerpAPI key out."""
    from zerosearch.rollout.factory import config_section, val_search_config

    cfg = setup.cfg
    section = config_section(cfg, "search")
    search = {**val_search_config(cfg).to_dict(),
              **{k: section[k] for k in ("max_turns", "observation_format", "final_turn") if k in section}}
    search.pop("serpapi_key", None)
    return {
        "model": setup.values["MODEL_PATH"], "model_dir": setup.model_dir, "model_kind": setup.model_kind,
        "search_engine": setup.engine, "max_turns": int(setup.values["MAX_TURNS"]), "topk": int(setup.values["TOPK"]),
        "n": setup.n, "temperature": setup.temperature, "top_p": float(setup.values["TOP_P"]),
        "seed": int(setup.values["SEED"]), "rollout": cfg.actor_rollout_ref.rollout.name,
        "dtype": cfg.actor_rollout_ref.rollout.dtype, "device": setup.device,
        "max_prompt_length": cfg.data.max_prompt_length, "max_response_length": cfg.data.max_response_length,
        "max_obs_length": cfg.data.max_obs_length, "data_files": setup.data_files,
        "reward": dict(getattr(cfg, "reward", None) or {}), "search": search,
    }
