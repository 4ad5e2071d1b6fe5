"""Bad values of every train-script key: refused by the launcher before anything starts (no simulation server, no
Ray, no run log), with exit code 2 and one line naming the key and what it takes, no traceback, nothing on disk.

Most cases call the launcher's `main()` in this process (the code `bash train_grpo.sh` runs); a handful run the real
script in a subprocess. Every case also passes `trainer.total_training_steps=0`, which the trainer itself refuses at
once: should the launcher ever let a bad value through, the case fails on the trainer's message and its run log
instead of training. Also here: the micro-batches follow a small batch (TRAIN_BATCH_SIZE 2 ROLLOUT_N 2), SEARCH_ENGINE
auto validates on the run's own local corpus, and the quickstart's DRY_RUN takes every boolean word.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zerosearch.launch import KEYS, MICRO_BATCHES, build_overrides, check_local, main, parse_args

ROOT = Path(__file__).resolve().parents[2]
SAFETY = "trainer.total_training_steps=0"  # the trainer refuses it at once if a case ever reaches it
FAST_S = 10  # a refused launch in this process: the checks only (a simulation server or Ray take far longer)
SCRIPT_S = 45  # the same from `bash`: a fresh interpreter importing torch, three at a time on a slow host


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    (root / "no_config").mkdir()
    (root / "no_config" / "weights.bin").write_bytes(b"x")
    (root / "train_only").mkdir()
    (root / "train_only" / "train.parquet").write_bytes(b"PAR1")
    (root / "both").mkdir()
    for name in ("train.parquet", "test.parquet"):
        (root / "both" / name).write_bytes(b"PAR1")  # the trainer checks their content; the launcher their presence
    (root / "a_file").write_text("not a directory\n")
    return root


# (case id, KEY VALUE words; {d} is the fixture's directory) -> a substring of the one-line message
CASES = [
    ("gpus-zero", "NUM_GPUS_PER_NODE 0", "NUM_GPUS_PER_NODE must be >= 1"),
    ("gpus-word", "NUM_GPUS_PER_NODE two", "NUM_GPUS_PER_NODE expects an integer"),
    ("nnodes-negative", "NNODES -1", "NNODES must be >= 1"),
    ("model-missing", "MODEL_PATH /no/such/model", "MODEL_PATH: /no/such/model does not exist (a local model dir"),
    ("model-relative-missing", "MODEL_PATH ./no_such_model", "MODEL_PATH: ./no_such_model does not exist"),
    ("model-no-config", "MODEL_PATH {d}/no_config", "no_config has no config.json"),
    ("data-missing", "DATA_PATH /no/such/data", "DATA_PATH: /no/such/data is not a directory"),
    ("data-no-test", "DATA_PATH {d}/train_only", "train_only lacks test.parquet"),
    ("steps-zero", "TOTAL_STEPS 0", "TOTAL_STEPS must be >= 1"),
    ("steps-fraction", "TOTAL_STEPS 1.5", "TOTAL_STEPS expects an integer"),
    ("ip-octet", "IP 999.1.1.1", "IP expects IPv4 addresses or host names"),
    ("ip-garbage", "IP bad_host!", "IP expects IPv4 addresses or host names"),
    ("ip-empty-item", "IP 127.0.0.1,,10.0.0.2", "IP expects IPv4 addresses or host names"),
    ("search-mode", "SEARCH_MODE simulate", "SEARCH_MODE must be one of simulate_prompt"),
    ("simulator-missing", "SEARCH_MODE simulate_prompt SIMULATION_LLM /no/such/sim",
     "SIMULATION_LLM: /no/such/sim does not exist"),
    ("start-threshold", "START_THRESHOLD 1.5", "START_THRESHOLD must be in [0, 1]"),
    ("end-threshold-nan", "END_THRESHOLD nan", "END_THRESHOLD expects a finite number"),
    ("search-engine", "SEARCH_ENGINE loca", "SEARCH_ENGINE must be auto or one of"),
    ("max-turns", "MAX_TURNS -1", "MAX_TURNS must be >= 0"),
    ("topk-zero", "TOPK 0", "TOPK must be in [1, 1000]"),
    ("port-high", "PORT 99999", "PORT must be in [1, 65535]"),
    ("port-zero", "PORT 0", "PORT must be in [1, 65535]"),
    ("port-word", "PORT http", "PORT expects an integer"),
    ("experiment-slash", "EXPERIMENT_NAME a/b", "EXPERIMENT_NAME expects a name"),
    ("project-comma", "WANDB_PROJECT my_project,x", "WANDB_PROJECT expects a name"),
    ("save-freq-zero", "SAVE_FREQ 0", "SAVE_FREQ must be >= 1 (or -1: never)"),
    ("save-minutes", "SAVE_MINUTES -5", "SAVE_MINUTES must be >= 0"),
    ("test-freq-zero", "TEST_FREQ 0", "TEST_FREQ must be >= 1 (or -1: never)"),
    ("val-before-train", "VAL_BEFORE_TRAIN maybe", "VAL_BEFORE_TRAIN expects true/false (or 1/0, yes/no)"),
    ("device-word", "DEVICE gpu", "DEVICE must be auto or cpu or cuda"),
    ("rollout", "ROLLOUT sglang", "ROLLOUT must be vllm or hf"),
    ("precision", "PRECISION fp8", "PRECISION must be auto, fp32 or bf16"),
    ("batch-negative", "TRAIN_BATCH_SIZE -1", "TRAIN_BATCH_SIZE must be >= 1"),
    ("batch-indivisible", "TRAIN_BATCH_SIZE 3 ROLLOUT_N 3 NUM_GPUS_PER_NODE 2",
     "TRAIN_BATCH_SIZE x ROLLOUT_N = 9 samples per step must divide evenly over 2 workers"),
    ("rollout-n-grpo", "ROLLOUT_N 1", "ROLLOUT_N must be >= 2 (GRPO compares"),
    ("lr-zero", "LR 0", "LR must be > 0"),
    ("lr-word", "LR fast", "LR expects a number"),
    ("logger", "LOGGER console,tensorboard", "LOGGER expects a comma list of console, jsonl, wandb"),
    ("checkpoint-file", "CHECKPOINT_DIR {d}/a_file", "CHECKPOINT_DIR: "),
    ("corpus-missing", "SEARCH_MODE local CORPUS_PATH /no/such/corpus.jsonl",
     "CORPUS_PATH: /no/such/corpus.jsonl does not exist"),
    ("retriever-scheme", "SEARCH_MODE wiki RETRIEVER_URL ftp://127.0.0.1:8000", "RETRIEVER_URL expects http(s)://"),
    ("retriever-port", "SEARCH_MODE wiki RETRIEVER_URL http://127.0.0.1:99999", "RETRIEVER_URL expects http(s)://"),
    ("dry-run", "DRY_RUN maybe", "DRY_RUN expects true/false (or 1/0, yes/no)"),
    ("log-level", "LOG_LEVEL LOUD", "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
    ("verbose", "VERBOSE 2", "VERBOSE expects true/false (or 1/0, yes/no)"),
    ("google-no-key", "SEARCH_ENGINE google", "SEARCH_ENGINE google needs a SerpAPI key: export SER_API_KEY"),
    ("auto-google-no-key", "SEARCH_MODE simulate_prompt DATA_PATH {d}/both",
     "SEARCH_ENGINE auto validates on google"),
]
SUBPROCESS_CASES = ("model-missing", "search-engine", "port-high", "data-no-test", "batch-negative", "dry-run")


def _argv(words: str, d: Path, run: Path) -> list[str]:
    """Local search (no simulator needed) unless the case says otherwise, and the case's own run dir."""
    own = [] if "CHECKPOINT_DIR" in words else ["CHECKPOINT_DIR", str(run)]
    return ["SEARCH_MODE", "local", *own, *words.format(d=d).split(), SAFETY]


def _check_refusal(rc: int, err: str, expected: str, run: Path, elapsed: float, bound: float = FAST_S) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert not run.exists(), f"{run} was created"
    assert elapsed < bound, f"refused after {elapsed:.1f} s"


def test_every_key_has_a_bad_input_case():
    named = {w for _, words, _ in CASES for w in words.split() if w in KEYS}
    assert named == set(KEYS), set(KEYS) - named


@pytest.mark.parametrize("words, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_value_is_refused_at_once(words, expected, dirs, tmp_path, capsys, monkeypatch):
    import torch

    for env in ("SER_API_KEY", "SERPAPI_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    if "DEVICE cuda" in words and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    run = tmp_path / "run"
    t0 = time.monotonic()
    rc = main(["grpo", *_argv(words, dirs, run)])
    _check_refusal(rc, capsys.readouterr().err, expected, run, time.monotonic() - t0)


def test_device_cuda_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    run = tmp_path / "run"
    t0 = time.monotonic()
    rc = main(["grpo", "SEARCH_MODE", "local", "DEVICE", "cuda", "CHECKPOINT_DIR", str(run), SAFETY])
    _check_refusal(rc, capsys.readouterr().err, "DEVICE cuda: no CUDA GPU is visible here; use DEVICE cpu", run,
                   time.monotonic() - t0)


@pytest.mark.slow
def test_bad_values_through_the_real_script(dirs, tmp_path):
    """`bash train_grpo.sh KEY VALUE`: the same refusals from the shell, in a few seconds each (three at a time)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SER_API_KEY", "SERPAPI_API_KEY")}
    env["PYTHON"] = sys.executable
    cases = [c for c in CASES if c[0] in SUBPROCESS_CASES]
    assert len(cases) == len(SUBPROCESS_CASES)

    def launch(case):
        name, words, expected = case
        run = tmp_path / name
        t0 = time.monotonic()
        r = subprocess.run(["bash", str(ROOT / "train_grpo.sh"), *_argv(words, dirs, run)], capture_output=True,
                           text=True, timeout=120, env=env, cwd=tmp_path)
        return r, expected, run, time.monotonic() - t0

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(launch, cases))
    for r, expected, run, elapsed in results:
        _check_refusal(r.returncode, r.stderr, expected, run, elapsed, SCRIPT_S)
    assert not list(tmp_path.glob("wandb*")) and not list(tmp_path.glob("*/logs"))


@pytest.mark.parametrize("words", ["MODEL_PATH Qwen/Qwen2.5-3B", "MODEL_PATH embedded", "IP localhost,10.0.0.2",
                                   "SAVE_FREQ -1 TEST_FREQ -1", "MAX_TURNS 0", "SIMULATION_LLM SearchSimulation_14B",
                                   "SEARCH_MODE wiki RETRIEVER_URL https://retriever.example.org",
                                   "DRY_RUN yes VERBOSE 1 VAL_BEFORE_TRAIN No"])
def test_good_values_pass(words, dirs):
    """The checks refuse what cannot work, not what merely looks unusual (hub ids, host lists, -1 for never)."""
    launch = parse_args("grpo", words.split())
    build_overrides(launch, gpu=False)
    assert check_local(launch) == []


def _micro(cfg) -> dict[str, int]:
    a = cfg.actor_rollout_ref
    return {"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": a.actor.ppo_micro_batch_size_per_gpu,
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": a.rollout.log_prob_micro_batch_size_per_gpu,
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": a.ref.log_prob_micro_batch_size_per_gpu,
            "critic.ppo_micro_batch_size_per_gpu": cfg.critic.ppo_micro_batch_size_per_gpu}


def test_micro_batch_presets_are_the_configs():
    from verl.trainer.main_ppo import compose_config

    assert _micro(compose_config("zerosearch", [])) == MICRO_BATCHES


@pytest.mark.parametrize("algo, words, gpu, per_worker", [
    ("grpo", "TRAIN_BATCH_SIZE 2 ROLLOUT_N 2", False, 4),
    ("ppo", "TRAIN_BATCH_SIZE 2 ROLLOUT_N 2", False, 4),
    ("ppo", "TRAIN_BATCH_SIZE 3 ROLLOUT_N 2 NUM_GPUS_PER_NODE 2", True, 3),
    ("grpo", "TRAIN_BATCH_SIZE 64 ROLLOUT_N 5 NUM_GPUS_PER_NODE 4", True, 80),
])
def test_small_batches_get_micro_batches_that_divide_them(algo, words, gpu, per_worker):
    """`TRAIN_BATCH_SIZE 2 ROLLOUT_N 2` was refused: the mini-batch followed the batch, the micro-batches stayed at 8.
    With row-count micro-batches (use_dynamic_bsz off) the resolved config must be valid."""
    from verl.trainer.main_ppo import compose_config

    rows = ["actor_rollout_ref.actor.use_dynamic_bsz=false", "critic.use_dynamic_bsz=false"]
    cfg = compose_config("zerosearch", build_overrides(parse_args(algo, [*words.split(), *rows]), gpu=gpu))
    for key, size in _micro(cfg).items():
        assert per_worker % size == 0 and size <= MICRO_BATCHES[key], (key, size)
    assert _micro(cfg)["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == max(
        d for d in range(1, 9) if per_worker % d == 0)


def test_small_batch_dry_run_is_valid(capsys):
    assert main(["grpo", "TRAIN_BATCH_SIZE", "2", "ROLLOUT_N", "2", "DRY_RUN", "1",
                 "actor_rollout_ref.actor.use_dynamic_bsz=false"]) == 0, capsys.readouterr().err
    assert "placement:" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["local", "simulate_prompt"])
def test_auto_validation_uses_the_given_corpus(mode, dirs, tmp_path):
    """SEARCH_ENGINE auto with CORPUS_PATH and a DATA_PATH without corpus.jsonl validated on google (and the run then
    failed for want of a SerpAPI key after training): it validates on local BM25 over CORPUS_PATH."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "0", "contents": "\\"T\\"\\ntext"}\n')
    launch = parse_args("grpo", ["SEARCH_MODE", mode, "DATA_PATH", str(dirs / "both"), "CORPUS_PATH", str(corpus)])
    ov = dict(o.split("=", 1) for o in build_overrides(launch, gpu=False))
    assert ov["search.val_mode"] == "local" and ov["search.corpus_path"] == str(corpus)
    assert check_local(launch) == []


def test_real_training_mode_validates_on_itself(dirs):
    ov = dict(o.split("=", 1) for o in build_overrides(parse_args("grpo", ["SEARCH_MODE", "wiki", "DATA_PATH",
                                                                           str(dirs / "both")]), gpu=False))
    assert ov["search.val_mode"] == "wiki"


@pytest.mark.parametrize("word", ["1", "yes"])
def test_quickstart_dry_run_takes_every_boolean_word(word, tmp_path):
    """`make quickstart ARGS="DRY_RUN 1"` started the real quickstart (only `true` was read as a dry run)."""
    run = tmp_path / "run"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "zerosearch.quickstart", "DRY_RUN", word, "CHECKPOINT_DIR", str(run)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verl.trainer.main_ppo --config-name zerosearch" in r.stdout and "placement:" in r.stdout
    assert not run.exists() and time.monotonic() - t0 < 60


@pytest.mark.parametrize("script, words, expected", [
    ("launch_simulation_server.sh", "PORT 0", "PORT must be a positive integer"),
    ("launch_simulation_server.sh", "PORT 99999", "PORT must be a TCP port in [1, 65535]"),
    ("launch_simulation_server.sh", "TP 0", "TP must be a positive integer"),
    ("launch_simulation_server.sh", "MODEL /no/such/model", "MODEL: /no/such/model does not exist"),
    ("train_simulator.sh", "EVAL maybe", "EVAL expects true/false (or 1/0, yes/no)"),
    ("train_simulator.sh", "NPROC two", "NPROC must be a positive integer"),
    ("train_simulator.sh", "MAX_QUESTIONS -1", "MAX_QUESTIONS must be an integer >= 0"),
    ("launch_retriever.sh", "TOPK 0", "TOPK must be an integer in [1, 1000]"),
])
def test_server_scripts_refuse_bad_values(script, words, expected, tmp_path):
    """The other launchers' keys: refused in the shell before any Python starts."""
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(ROOT / "scripts" / script), *words.split()], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHON": sys.executable}, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == r.stderr.strip().splitlines()[0], r.stderr[-2000:]
    assert expected in r.stderr and time.monotonic() - t0 < 10


def test_no_simulation_server_and_none_to_serve(tmp_path, capsys):
    """A served model name (nothing this launcher can serve) and nothing answering at IP:PORT: refused before the run
    log, not after it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing answers there
    run = tmp_path / "run"
    t0 = time.monotonic()
    rc = main(["grpo", "SEARCH_MODE", "simulate_sft", "SIMULATION_LLM", "SearchSimulation_14B", "PORT", str(port),
               "CHECKPOINT_DIR", str(run), SAFETY])
    _check_refusal(rc, capsys.readouterr().err, f"no simulation server answers at 127.0.0.1:{port} (SEARCH_MODE "
                   "simulate_sft): start one with scripts/launch_simulation_server.sh", run, time.monotonic() - t0)
