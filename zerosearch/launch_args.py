"""The train scripts' keys: the table of KEY -> (default, help), parsing `KEY VALUE ... a.b=c`, and every check of
the values before anything starts.

`check_values` looks at each value on its own (numbers and their ranges, choices, addresses, names) and reads no
disk; `check_local` checks what the run needs of this machine (model dirs, data files, the local corpus, a SerpAPI key
for google, a GPU for DEVICE cuda). Both name the key and the fix in one line; `zerosearch.launch` turns them into
exit code 2 (the dry run prints `check_local`'s problems as warnings).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


EMBEDDED_DATA = "data/embedded"


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
    "SEARCH_ENGINE": ("auto", "validation engine: local | wiki | google (auto: SEARCH_MODE when it is a real engine, "
                              "else local BM25 when there is a corpus: CORPUS_PATH, DATA_PATH/corpus.jsonl or the "
                              "embedded world; else google)"),
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
    "DRY_RUN": ("false", "print the trainer command and its placement, and exit (local files: warnings only)"),
    "LOG_LEVEL": ("WARNING", "console level: DEBUG | INFO | WARNING | ERROR (INFO and DEBUG show library output; "
                             "<checkpoint dir>/logs/train.log has everything at INFO and above either way)"),
    "VERBOSE": ("false", "true: everything on the console (vLLM, Ray, HF output and warnings), as without the run log"),
}


BOOL_KEYS = ("VAL_BEFORE_TRAIN", "DRY_RUN", "VERBOSE")


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


class UsageError(Exception):
    pass


class BadValue(UsageError):
    """A key's value is refused: the message (one line) names the key and what it takes."""


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


def parse_bool(value: str, key: str) -> bool:
    """true/false, 1/0, yes/no (any case); anything else is a UsageError naming the key."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise BadValue(f"{key} expects true/false (or 1/0, yes/no), got {value!r}")


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _num(v: dict[str, str], key: str, kind: type, low: float | None = None, high: float | None = None,
         off: int | None = None, what: str = "") -> float:
    """`v[key]` as `kind` in [low, high] (or exactly `off`, e.g. -1: never); a BadValue naming the key otherwise."""
    word = "an integer" if kind is int else "a number"
    try:
        x = kind(v[key])
    except ValueError:
        raise BadValue(f"{key} expects {word}, got {v[key]!r}") from None
    if kind is float and not math.isfinite(x):
        raise BadValue(f"{key} expects a finite number, got {v[key]!r}")
    if x != off and ((low is not None and x < low) or (high is not None and x > high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        alt = f" (or {off}{what})" if off is not None else (f" ({what})" if what else "")
        raise BadValue(f"{key} must be {bounds}{alt}, got {v[key]!r}")
    return x


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # `_`: container names


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def _is_host(host: str) -> bool:
    """An IPv4 address or a DNS host name (what `http://HOST:PORT` can reach)."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
        except ValueError:
            return False
    return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


def _path_like(value: str) -> bool:
    """A value that can only be a local path (not a hub id like `Qwen/Qwen2.5-3B`, not a served model name)."""
    return value.startswith(("/", ".", "~")) or ("/" in value and not _HUB_ID.fullmatch(value))


def check_values(algo: str, v: dict[str, str]) -> None:
    """Every key's value on its own (numbers, ranges, choices, addresses, names), with the defaults resolved; a
    BadValue naming the key and what it takes. Nothing here reads the disk (see `check_local`)."""
    from zerosearch.search import registry

    check_shared(v, KEYS)
    _num(v, "NUM_GPUS_PER_NODE", int, 1, what="workers per node")
    _num(v, "NNODES", int, 1)
    _num(v, "TOTAL_STEPS", int, 1)
    _num(v, "SAVE_FREQ", int, 1, off=-1, what=": never")
    _num(v, "TEST_FREQ", int, 1, off=-1, what=": never")
    _num(v, "TRAIN_BATCH_SIZE", int, 1, what="prompts per step")
    _num(v, "ROLLOUT_N", int, 2 if algo == "grpo" else 1,
         what="GRPO compares the samples of one prompt" if algo == "grpo" else "samples per prompt")
    _num(v, "START_THRESHOLD", float, 0, 1, what="a noise probability")
    _num(v, "END_THRESHOLD", float, 0, 1, what="a noise probability")
    _num(v, "SAVE_MINUTES", float, 0, what="0: no time condition")
    if _num(v, "LR", float) <= 0:
        raise BadValue(f"LR must be > 0, got {v['LR']!r}")
    workers = int(v["NUM_GPUS_PER_NODE"]) * int(v["NNODES"])
    samples = int(v["TRAIN_BATCH_SIZE"]) * int(v["ROLLOUT_N"])
    if samples % workers:
        raise BadValue(f"TRAIN_BATCH_SIZE x ROLLOUT_N = {samples} samples per step must divide evenly over {workers} "
                       "workers (NUM_GPUS_PER_NODE x NNODES): change one of them")
    modes = registry.modes()
    if v["SEARCH_MODE"] not in modes:
        raise BadValue(f"SEARCH_MODE must be one of {', '.join(modes)}, got {v['SEARCH_MODE']!r}")
    loggers = [lg.strip() for lg in v["LOGGER"].split(",") if lg.strip()]
    if any(lg not in ("console", "jsonl", "wandb") for lg in loggers):
        raise BadValue(f"LOGGER expects a comma list of console, jsonl, wandb, got {v['LOGGER']!r}")
    for key in ("EXPERIMENT_NAME", "WANDB_PROJECT"):
        if v[key] != "auto" or key == "WANDB_PROJECT":
            if not _NAME.fullmatch(v[key]):
                raise BadValue(f"{key} expects a name of letters, digits and . _ + - (it names a directory and a "
                               f"W&B run), got {v[key]!r}")
    for key in ("DATA_PATH", "CHECKPOINT_DIR"):
        if not v[key].strip():
            raise BadValue(f"{key} is empty: {KEYS[key][1]}")


def check_shared(v: dict[str, str], keys: dict[str, tuple[str, str]]) -> None:
    """The checks of the keys the train scripts share with `scripts/evaluate.sh` and `zerosearch.infer` (each one
    that `v` holds): search turns and documents, the simulation servers' addresses, the retriever URL, the device,
    engine and search engine choices, the model names. `keys` gives the help shown for an empty value."""
    from zerosearch.search import registry

    if "MAX_TURNS" in v:
        _num(v, "MAX_TURNS", int, 0)
    if "TOPK" in v:
        _num(v, "TOPK", int, 1, 1000, what="documents per search")
    if "PORT" in v:
        _num(v, "PORT", int, 1, 65535, what="a TCP port")
    if "IP" in v:
        ips = [ip.strip() for ip in v["IP"].split(",")]
        if not all(_is_host(ip) for ip in ips):
            raise BadValue(f"IP expects IPv4 addresses or host names, comma-separated (e.g. 127.0.0.1 or "
                           f"10.0.0.1,10.0.0.2), got {v['IP']!r}")
    modes = registry.modes()
    if "SEARCH_ENGINE" in v and v["SEARCH_ENGINE"] != "auto" and v["SEARCH_ENGINE"] not in modes:
        raise BadValue(f"SEARCH_ENGINE must be auto or one of {', '.join(modes)}, got {v['SEARCH_ENGINE']!r}")
    for key, choices in (("DEVICE", ("auto", "cpu", "cuda")), ("ROLLOUT", ("vllm", "hf"))):
        if key in v and v[key] not in choices:
            raise BadValue(f"{key} must be {' or '.join(choices)}, got {v[key]!r}")
    for key in ("MODEL_PATH", "SIMULATION_LLM", "CORPUS_PATH"):
        if key in v and not v[key].strip():
            raise BadValue(f"{key} is empty: {keys[key][1]}")
    if "RETRIEVER_URL" in v:
        from urllib.parse import urlsplit

        try:
            url = urlsplit(v["RETRIEVER_URL"])
            ok = url.scheme in ("http", "https") and bool(url.hostname) and _is_host(url.hostname) and \
                (url.port is None or url.port >= 1)
        except ValueError:  # a port out of range
            ok = False
        if not ok:
            raise BadValue(f"RETRIEVER_URL expects http(s)://HOST[:PORT] (e.g. http://127.0.0.1:8000), got "
                           f"{v['RETRIEVER_URL']!r}")


def validation_engine(v: dict[str, str]) -> str:
    """SEARCH_ENGINE with `auto` resolved: a real SEARCH_MODE validates on itself (local: on CORPUS_PATH); a simulated
    one on local BM25 when there is a corpus (CORPUS_PATH given, the embedded world, or DATA_PATH/corpus.jsonl),
    else on google."""
    from zerosearch.search import registry

    if v["SEARCH_ENGINE"] != "auto":
        return v["SEARCH_ENGINE"]
    if not registry.is_simulated(v["SEARCH_MODE"]):
        return v["SEARCH_MODE"]
    data = v["DATA_PATH"].rstrip("/")
    if v["CORPUS_PATH"] != "auto" or _local(data).resolve() == (ROOT / EMBEDDED_DATA).resolve() or \
            (_local(data) / "corpus.jsonl").exists():
        return "local"
    return "google"


def _local(path: str) -> Path:
    """A path as the trainer reads it (it runs in ROOT)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def _given(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def check_local(launch: Launch) -> list[str]:
    """What a run needs of this machine, each a one-line problem naming the key and the fix: local model dirs, the
    data files, the corpus of a local engine, a SerpAPI key for google, a GPU for DEVICE cuda. Run before anything
    starts; the dry run (which may plan for another machine) prints them as warnings."""
    from zerosearch.search.config import SERPAPI_KEY_ENVS

    v, problems = launch.values, []
    for key, what in (("MODEL_PATH", "a local model dir with config.json, a hub id, or 'embedded'"),
                      ("SIMULATION_LLM", "a local model dir with config.json to serve, a served model name, or "
                                         "'embedded'")):
        path = _local(v[key])
        if not _path_like(v[key]) or v[key].startswith("embedded"):
            continue
        if not path.exists():
            problems.append(f"{key}: {v[key]} does not exist ({what})")
        elif not (path / "config.json").is_file():
            hint = f"; did you mean {v[key].rstrip('/')}/huggingface?" \
                if (path / "huggingface" / "config.json").is_file() else ""
            problems.append(f"{key}: {v[key]} has no config.json ({what}){hint}")
    data = v["DATA_PATH"].rstrip("/")
    if data != EMBEDDED_DATA:  # the embedded world is generated when missing
        if not _local(data).is_dir():
            problems.append(f"DATA_PATH: {data} is not a directory (a dir with train.parquet and test.parquet; "
                            "scripts/prepare_data.sh makes one)")
        else:
            missing = [f for f in ("train.parquet", "test.parquet") if not (_local(data) / f).is_file()]
            if missing:
                problems.append(f"DATA_PATH: {data} lacks {' and '.join(missing)} (a dir with train.parquet and "
                                "test.parquet; scripts/prepare_data.sh makes one)")
    engine = validation_engine(v)
    corpus = v["CORPUS_PATH"] if v["CORPUS_PATH"] != "auto" else f"{data}/corpus.jsonl"
    embedded_corpus = v["CORPUS_PATH"] == "auto" and data == EMBEDDED_DATA
    if "local" in (v["SEARCH_MODE"], engine) and not embedded_corpus and not _local(corpus).is_file() and \
            not _given(launch.passthrough, "search.corpus_path"):
        problems.append(f"CORPUS_PATH: {corpus} does not exist (the local engine's corpus JSONL; give CORPUS_PATH, "
                        "or put corpus.jsonl in DATA_PATH)")
    has_key = any(os.environ.get(e) for e in SERPAPI_KEY_ENVS) or _given(launch.passthrough, "search.serpapi_key")
    if "google" in (v["SEARCH_MODE"], engine) and not has_key and not _given(launch.passthrough, "search.val_mode"):
        who = "SEARCH_MODE google" if v["SEARCH_MODE"] == "google" else (
            "SEARCH_ENGINE google" if v["SEARCH_ENGINE"] == "google"
            else f"SEARCH_ENGINE auto validates on google ({data} has no corpus.jsonl)")
        problems.append(f"{who} needs a SerpAPI key: export SER_API_KEY=..., or validate on a corpus with "
                        "SEARCH_ENGINE local CORPUS_PATH <corpus.jsonl> (or SEARCH_ENGINE wiki)")
    if v["DEVICE"] == "cuda" and not _has_gpu():
        problems.append("DEVICE cuda: no CUDA GPU is visible here; use DEVICE cpu (or auto)")
    if v["CHECKPOINT_DIR"] != "auto" and _local(v["CHECKPOINT_DIR"]).is_file():
        problems.append(f"CHECKPOINT_DIR: {v['CHECKPOINT_DIR']} is a file, not a directory")
    return problems
