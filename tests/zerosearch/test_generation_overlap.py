"""Overlap of search with generation (`search.overlap_chunks`): same trajectories as the synchronous loop.

The engine is the real HF engine with `max_num_seqs=1` and greedy decoding, so a row's output does not depend on
which other rows share its engine call: the chunked (overlapped) rollout must then reproduce the synchronous
one token for token. The backend is the real local BM25 engine with an added latency (a remote engine's), so
a chunk's search is still running while the next chunk generates, which the test checks from the recorded
time intervals.
"""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import torch

from verl.protocol import DataProto
from verl.workers.rollout import SamplingParams, build_rollout_engine
from zerosearch.data.prompts import build_prompt
from zerosearch.generation import GenerationConfig, SearchRolloutManager
from zerosearch.search import build_search_backend

GREEDY = SamplingParams(temperature=0.0, max_tokens=1000, seed=0)


def test_overlap_chunks_config():
    assert GenerationConfig().overlap_chunks == 1
    assert GenerationConfig.from_dict({"overlap_chunks": 4}).overlap_chunks == 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"search\.overlap_chunks"):
            GenerationConfig.from_dict({"overlap_chunks": bad})


class TimedEngine:
    """The real engine; records (start, end) of every generate call."""

    def __init__(self, inner) -> None:
        self.inner, self.max_model_len, self.calls = inner, inner.max_model_len, []

    def generate(self, prompts, params):
        t0 = time.perf_counter()
        out = self.inner.generate(prompts, params)
        self.calls.append((t0, time.perf_counter(), len(prompts)))
        return out


class SlowBackend:
    """The real local backend behind a fixed latency; records each call's thread, interval and queries."""

    def __init__(self, inner, latency_s: float) -> None:
        self.inner, self.name, self.latency_s, self.calls = inner, inner.name, latency_s, []

    def search(self, requests, topk):
        t0 = time.perf_counter()
        time.sleep(self.latency_s)
        out = self.inner.search(requests, topk)
        self.calls.append((threading.current_thread().name, t0, time.perf_counter(), [r.query for r in requests]))
        return out

    def pop_metrics(self):
        return self.inner.pop_metrics()

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from zerosearch.data.world import generate

    out = tmp_path_factory.mktemp("world")
    generate(out, seed=0, n_entities=1000, n_train=8, n_test=2)
    return out


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    threads = torch.get_num_threads()
    yield build_rollout_engine("hf", embedded_model_path, max_model_len=2048, max_num_seqs=1, cpu_threads=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_backend(world_dir, tmp_path_factory):
    backend = build_search_backend({"mode": "local", "corpus_path": str(world_dir / "corpus.jsonl"),
                                    "index_dir": str(tmp_path_factory.mktemp("bm25"))})
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def batch(engine, world_dir):
    tok = engine.tokenizer
    df = pd.read_parquet(world_dir / "train.parquet")
    questions = [(q, [str(a) for a in g]) for q, g in zip(df["question"], df["golden_answers"])][:5]
    # mixed first actions: answer at once, forced search (greedy closes the prefilled tag), free text
    prefills = ["<answer>", "<search> " + questions[1][0].rstrip("?") + ".", "", "<search>",
                "<search> " + questions[4][0].rstrip("?") + "."]
    ids = [tok.encode(tok.apply_chat_template(build_prompt(q), tokenize=False, add_generation_prompt=True) + pre,
                      add_special_tokens=False) for (q, _), pre in zip(questions, prefills)]
    return DataProto.from_dict(non_tensors={"prompt_ids": ids, "question": [q for q, _ in questions],
                                            "golden_answers": [g for _, g in questions]})


def _run(engine, local_backend, batch, chunks: int):
    cfg = GenerationConfig(max_turns=2, max_prompt_length=400, max_response_length=64, max_obs_length=40, topk=2,
                           overlap_chunks=chunks)
    timed, backend = TimedEngine(engine), SlowBackend(local_backend, latency_s=0.3)
    out = SearchRolloutManager(timed, engine.tokenizer, backend, cfg).run(batch, GREEDY)
    return out, timed, backend


KEYS = ("response_text", "num_turns", "num_searches", "valid_actions", "finished", "stop_reason", "search_queries")


@pytest.mark.slow
def test_overlapped_rollout_equals_synchronous(engine, local_backend, batch):
    sync, sync_engine, sync_backend = _run(engine, local_backend, batch, chunks=1)
    nt = sync.non_tensor_batch
    assert sum(nt["num_searches"]) >= 3, nt["response_text"]  # the test must exercise searches in several chunks
    assert all(name == threading.main_thread().name for name, *_ in sync_backend.calls)
    for chunks in (2, 3):
        out, timed, backend = _run(engine, local_backend, batch, chunks)
        for key in ("responses", "response_mask", "attention_mask", "input_ids", "position_ids", "info_mask"):
            assert torch.equal(out.batch[key], sync.batch[key]), (chunks, key)
        for key in KEYS:
            assert [list(x) if key == "search_queries" else x for x in out.non_tensor_batch[key]] == \
                   [list(x) if key == "search_queries" else x for x in nt[key]], (chunks, key)
        assert sorted(q for *_, qs in backend.calls for q in qs) == sorted(q for *_, qs in sync_backend.calls
                                                                           for q in qs)
        assert all(name.startswith("zs-search") for name, *_ in backend.calls)
        assert len(timed.calls) > len(sync_engine.calls)  # chunks take turns on the engine
        # some search ran while the engine was generating for another chunk
        overlap = max(min(s1, g1) - max(s0, g0) for _, s0, s1, _ in backend.calls for g0, g1, _ in timed.calls)
        assert overlap > 0.05, (backend.calls, timed.calls)
