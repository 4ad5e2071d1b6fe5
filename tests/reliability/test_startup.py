"""The start-up check: every bad input below is refused by `python -m verl.trainer.main_ppo` before Ray starts or a
model loads, with exit code 2, one line naming the key (and the fix), no traceback, and nothing left on disk.

Each case is a real subprocess of the trainer's command line with the zerosearch config on a tiny embedded world;
the cases run a few at a time. Also here: secrets given as overrides never appear in Hydra's messages, the shipped
`data.truncation` refuses an over-long prompt instead of cutting its instructions, the validation backend is
checked (and built) at start-up, and a good config passes the check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-FAKE-serpapi-0123456789abcdef"
BEFORE_RAY_S = 60  # a refused run exits in seconds (import + compose + check); Ray + the model take longer


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from zerosearch.data.world import generate

    out = tmp_path_factory.mktemp("world")
    generate(out, seed=0, n_entities=1000, n_train=12, n_test=4)
    df = pd.read_parquet(out / "train.parquet")
    (out / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
    df.drop(columns=["prompt"]).to_parquet(out / "no_prompt.parquet")
    df.drop(columns=["golden_answers"]).to_parquet(out / "no_answers.parquet")
    (out / "model_without_config").mkdir()
    return out


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SER_API_KEY", "SERPAPI_API_KEY", "SERPAPI_BASE_URL")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return env


def base_overrides(world: Path, run_dir: Path) -> list[str]:
    return [f"data.train_files=[{world}/train.parquet]", f"data.val_files=[{world}/test.parquet]",
            "data.train_batch_size=2", "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "trainer.device=cpu",
            "trainer.total_training_steps=1", "trainer.test_freq=1", "trainer.logger=[console,jsonl,wandb]",
            f"trainer.default_local_dir={run_dir}/ckpt/run", f"search.corpus_path={world}/corpus.jsonl"]


def trainer(world: Path, run_dir: Path, *overrides: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess,
                                                                                           float]:
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", "--config-name", "zerosearch",
           *base_overrides(world, run_dir), *[o.format(world=world) for o in overrides]]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - t0


# (id, overrides, what the one line must say)
CASES = [
    ("model-path-missing", ["actor_rollout_ref.model.path=/nonexistent/model"],
     ["actor_rollout_ref.model.path: /nonexistent/model does not exist", "hub id"]),
    ("model-path-not-a-model", ["actor_rollout_ref.model.path={world}/model_without_config"],
     ["actor_rollout_ref.model.path:", "no config.json"]),
    ("model-hub-id-offline-not-cached", ["actor_rollout_ref.model.path=nobody-zs/no-such-model"],
     ["actor_rollout_ref.model.path: nobody-zs/no-such-model", "HF_HUB_OFFLINE", "download"]),
    ("critic-model-path-missing", ["algorithm.adv_estimator=gae", "critic.model.path=/nonexistent/critic"],
     ["critic.model.path: /nonexistent/critic does not exist"]),
    ("train-file-missing", ["data.train_files=[/nonexistent/train.parquet]"],
     ["data.train_files: /nonexistent/train.parquet does not exist", "zerosearch.data.world"]),
    ("train-file-corrupt", ["data.train_files=[{world}/corrupt.parquet]"],
     ["data.train_files:", "corrupt.parquet is not a readable parquet file"]),
    ("val-file-missing", ["data.val_files=[/nonexistent/test.parquet]"],
     ["data.val_files: /nonexistent/test.parquet does not exist"]),
    ("val-file-no-prompt-column", ["data.val_files=[{world}/no_prompt.parquet]"],
     ["data.val_files:", "no column 'prompt'", "data.prompt_key"]),
    ("train-file-schema", ["data.train_files=[{world}/no_answers.parquet]"],
     ["data.train_files:", "missing column(s) ['golden_answers']", "zerosearch.data.prepare"]),
    ("train-batch-size-negative", ["data.train_batch_size=-1"], ["data.train_batch_size must be >= 1, got -1"]),
    ("val-batch-size-zero", ["data.val_batch_size=0"], ["data.val_batch_size must be >= 1, got 0"]),
    ("micro-batch-zero", ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=0"],
     ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu must be >= 1"]),
    ("truncation-unknown", ["data.truncation=center"], ["data.truncation must be one of error|left|right|middle"]),
    ("search-mode-typo", ["search.mode=gogle"], ["search.mode must be one of", "'gogle'"]),
    ("search-val-mode-typo", ["search.val_mode=lokal"], ["search.val_mode must be one of", "'lokal'"]),
    ("search-port-out-of-range", ["search.port=99999"], ["search.port must be a TCP port (1..65535), got 99999"]),
    ("search-ip-invalid", ["search.ips=[999.1.1.1]"], ["search.ips: '999.1.1.1' is not an IP address"]),
    # search.corpus_path back to its default: no backend of these two reads it (another value is a no-op key)
    ("validation-google-without-key", ["search.val_mode=google", "search.corpus_path=data/embedded/corpus.jsonl"],
     ["validation search backend (search.val_mode=google)", "SerpAPI key", "SER_API_KEY"]),
    ("retriever-port-out-of-range", ["search.val_mode=wiki", "search.corpus_path=data/embedded/corpus.jsonl",
                                     "search.retriever_url=http://127.0.0.1:99999"],
     ["search.retriever_url=", "Port out of range"]),
    ("validation-corpus-missing", ["search.corpus_path=/nonexistent/corpus.jsonl"],
     ["validation search backend (search.val_mode=local)", "search.corpus_path", "does not exist"]),
    ("local-training-corpus-missing", ["search.mode=local", "search.corpus_path=/nonexistent/corpus.jsonl"],
     ["training search backend (search.mode=local)", "search.corpus_path"]),
    ("curriculum-schedule", ["search.schedule=cubic"], ["search.schedule must be one of", "'cubic'"]),
    ("curriculum-threshold", ["search.end_threshold=1.5"], ["search.end_threshold must be a probability in [0, 1]"]),
    ("rollout-max-turns", ["search.max_turns=-1"], ["search.max_turns"]),
    ("rollout-mode-unknown", ["actor_rollout_ref.rollout.mode=bogus"],
     ["actor_rollout_ref.rollout.mode='bogus' is not a rollout mode"]),
    ("reward-metric", ["reward.metric=bleu"], ["reward.metric must be one of", "'bleu'"]),
    ("rollout-fn-target", ["rollout_fn.target=nonexistent_pkg.mod:make"],
     ["rollout_fn.target='nonexistent_pkg.mod:make': cannot import nonexistent_pkg.mod"]),
]


@pytest.fixture(scope="module")
def refused(world, tmp_path_factory) -> dict:
    """Every case's (CompletedProcess, seconds, its scratch dir), run three at a time."""
    root = tmp_path_factory.mktemp("startup")

    def one(case):
        name, overrides, _ = case
        proc, secs = trainer(world, root / name, *overrides)
        return name, (proc, secs, root / name)

    with ThreadPoolExecutor(3) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name,overrides,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_ray(refused, name, overrides, expected):
    proc, secs, run_dir = refused[name]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: "), out
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in out
    assert list(run_dir.iterdir()) == [], "the refused run left files behind"
    assert secs < BEFORE_RAY_S, f"took {secs:.0f} s: the check ran after Ray / the model"


def test_good_config_passes_the_start_up_check(world, tmp_path):
    """The control: the same base config, untouched, passes `preflight.check` (so the cases fail for their reason)."""
    from verl.trainer import preflight
    from verl.trainer.main_ppo import compose_config

    cfg = compose_config("zerosearch", base_overrides(world, tmp_path))
    preflight.check(cfg)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("overrides", [
    (f"search.serpapi_key={SECRET}", "trainer.no_such_key=1"),  # Hydra refuses it (no +) and shows the override
    (f"+search.serpapi_key={SECRET}",),  # accepted by Hydra, refused as a key no backend of the run reads
    (f"+search.serpapi_key={SECRET}", "trainer.no_such_key=1"),  # next to another override Hydra refuses
    (f"+trainer.wandb_api_key={SECRET}x)", "data.train_batch_size=0"),  # not even valid override grammar
], ids=["hydra-refuses-it", "key-does-nothing", "hydra-refuses-another", "bad-grammar"])
def test_secret_override_never_printed(world, tmp_path, overrides):
    proc, _ = trainer(world, tmp_path, *overrides)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), out  # Hydra's own errors exit 1, the trainer's config errors 2
    assert "serpapi_key" in out or "no_such_key" in out or "wandb_api_key" in out, out  # the message is there...
    assert SECRET not in out  # ...without the secret
    assert "Traceback" not in out
    assert not any(SECRET in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_secret_override_reaches_the_config_and_not_the_error(world, tmp_path):
    """A valid secret override still works (the key is used: a google validation backend passes the key check), and a
    config error elsewhere does not print it."""
    proc, _ = trainer(world, tmp_path, "search.val_mode=google", f"+search.val.serpapi_key={SECRET}",
                      "data.train_batch_size=0")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "data.train_batch_size must be >= 1" in out, out
    assert SECRET not in out
    from verl.trainer.main_ppo import hide_secret_overrides

    env: dict = {}
    argv = hide_secret_overrides([f"+search.serpapi_key={SECRET}", "search.topk=2", "+x.hf_token=abc",
                                  "search.max_tokens=5"], env)
    assert argv == ["+search.serpapi_key=${oc.env:ZEROSEARCH_SECRET_0}", "search.topk=2",
                    "+x.hf_token=${oc.env:ZEROSEARCH_SECRET_2}", "search.max_tokens=5"]
    assert env == {"ZEROSEARCH_SECRET_0": SECRET, "ZEROSEARCH_SECRET_2": "abc"}


def test_validation_backend_follows_a_local_training_corpus(world):
    """search.mode=local with a corpus and the validation engine left to the default: validation searches the same
    corpus (BM25), never google; both backends are built with the rollout function, before step 1."""
    from verl.trainer.main_ppo import compose_config
    from zerosearch.rollout.factory import check_config, make_search_rollout_fn, val_search_config

    cfg = compose_config("zerosearch", base_overrides(world, world / "unused") + ["search.mode=local"])
    val = val_search_config(cfg)
    assert val.mode == "local" and val.corpus_path == f"{world}/corpus.jsonl"
    check_config(cfg)
    from transformers import AutoTokenizer

    from zerosearch.models import resolve_model_path

    rollout = make_search_rollout_fn(cfg, AutoTokenizer.from_pretrained(resolve_model_path("embedded")))
    try:
        assert set(rollout.managers) == {False, True}  # the validation manager exists before any step
    finally:
        rollout.close()


def test_over_long_prompt_is_refused_by_default(world, embedded_model_path):
    """The shipped zerosearch config keeps data.truncation=error: a prompt over data.max_prompt_length is refused
    naming the row, its length, the key and the fix; left/right/middle cut it only when asked."""
    from transformers import AutoTokenizer

    from verl.trainer.main_ppo import compose_config
    from verl.utils.config_loader import ConfigError
    from verl.utils.dataset import PromptDataset, prompt_options

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    cfg = compose_config("zerosearch", base_overrides(world, world / "unused") + ["data.max_prompt_length=64"])
    assert cfg.data.truncation == "error"
    with pytest.raises(ConfigError, match=r"data.train_files: row 0 has a \d+-token prompt, longer than "
                                          r"data.max_prompt_length=64 .*data.truncation=left\|right\|middle"):
        PromptDataset([f"{world}/train.parquet"], tok, **prompt_options(cfg.data))
    for side in ("left", "right", "middle"):
        opts = {**prompt_options(cfg.data), "truncation": side}
        rows = PromptDataset([f"{world}/train.parquet"], tok, **opts).rows
        assert max(len(r["prompt_ids"]) for r in rows) == 64
    full = PromptDataset([f"{world}/train.parquet"], tok, **{**prompt_options(cfg.data), "max_prompt_length": 4096})
    mid = PromptDataset([f"{world}/train.parquet"], tok, **{**prompt_options(cfg.data), "truncation": "middle"})
    ids, cut = full.rows[0]["prompt_ids"], mid.rows[0]["prompt_ids"]
    assert cut[:32] == ids[:32] and cut[32:] == ids[-32:]  # the instructions (start) and the question (end) kept


def test_over_long_prompt_refused_before_ray(world, tmp_path):
    """The same on the command line: exit 2, one line, before Ray (datasets are tokenised before it starts), and
    the run's log dir removed."""
    proc, secs = trainer(world, tmp_path, "data.max_prompt_length=64")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "row 0 has a" in proc.stderr and "data.max_prompt_length=64" in proc.stderr, out
    assert "Traceback" not in out
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
    assert secs < BEFORE_RAY_S
