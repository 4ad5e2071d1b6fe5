"""Fixtures of the rollout tests: a small embedded world, its training questions, the HF engine on the embedded
model and the world's local BM25 backend (module-scoped: each test module builds its own)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from verl.workers.rollout import build_rollout_engine
from zerosearch.search import build_search_backend


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from zerosearch.data.world import generate

    out = tmp_path_factory.mktemp("world")
    generate(out, seed=0, n_entities=1000, n_train=12, n_test=4)
    return out


@pytest.fixture(scope="module")
def questions(world_dir):
    df = pd.read_parquet(world_dir / "train.parquet")
    return [(q, [str(a) for a in g]) for q, g in zip(df["question"], df["golden_answers"])]


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    # One intra-op thread: on a shared 2-core box, 2 threads per process were measured 10x slower (spinning).
    threads = torch.get_num_threads()
    yield build_rollout_engine("hf", embedded_model_path, max_model_len=2048, cpu_threads=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(engine):
    return engine.tokenizer


@pytest.fixture(scope="module")
def local_backend(world_dir, tmp_path_factory):
    backend = build_search_backend({"mode": "local", "corpus_path": str(world_dir / "corpus.jsonl"),
                                    "index_dir": str(tmp_path_factory.mktemp("bm25"))})
    yield backend
    backend.close()
