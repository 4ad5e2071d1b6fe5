"""The asynchronous agent loop equals the lockstep loop token for token on greedy decoding.

One real engine, vLLM's AsyncLLM in-process on the embedded model (fp32 CPU), plays the same batch twice: through
the lockstep loop (its batched `generate`) and through the agent loop (one request per trajectory turn). The
backends are real: the local BM25 engine over the embedded world, and the shared vLLM simulation server at
temperature 0 with the curriculum's noise (each request carries its own noise seed, so the draws do not depend on
the order requests reach the simulator). Prompts mix first actions (answer at once, a forced search, free text) so
trajectories end at different turns and the agent loop really interleaves them (checked: requests in flight > 1).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from verl.protocol import DataProto
from verl.workers.rollout import SamplingParams, build_rollout_engine
from zerosearch.data.prompts import build_prompt
from zerosearch.rollout import AgentLoopRollout, GenerationConfig, LockstepRollout
from zerosearch.search import build_search_backend

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, max_tokens=1000, seed=3)
TENSORS = ("responses", "response_mask", "attention_mask", "input_ids", "position_ids", "info_mask")
FIELDS = ("response_text", "num_turns", "num_searches", "valid_actions", "finished", "stop_reason", "search_queries")


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    eng = build_rollout_engine("vllm", embedded_model_path, dtype=torch.float32, max_model_len=1024,
                               kv_cache_space_gb=0.5, max_num_seqs=16, asynchronous=True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def batch(embedded_model_path, world_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    df = pd.read_parquet(world_dir / "train.parquet")
    questions = [(q, [str(a) for a in g]) for q, g in zip(df["question"], df["golden_answers"])][:10]
    prefills = ["<answer>", "<search> " + questions[1][0].rstrip("?") + ".", "", "<search>", "",
                "<search> " + questions[5][0].rstrip("?") + ".", "", "<answer> The", "<search>", ""]
    ids = [tok.encode(tok.apply_chat_template(build_prompt(q), tokenize=False, add_generation_prompt=True) + pre,
                      add_special_tokens=False) for (q, _), pre in zip(questions, prefills)]
    return tok, DataProto.from_dict(non_tensors={"prompt_ids": ids, "question": [q for q, _ in questions],
                                                 "golden_answers": [g for _, g in questions]})


def _cfg() -> GenerationConfig:
    return GenerationConfig(max_turns=3, max_prompt_length=420, max_response_length=160, max_obs_length=64, topk=2)


def _assert_same(a: DataProto, b: DataProto) -> None:
    for key in TENSORS:
        assert torch.equal(a.batch[key], b.batch[key]), key
    for key in FIELDS:
        plain = (lambda xs: [list(x) for x in xs]) if key == "search_queries" else list
        assert plain(a.non_tensor_batch[key]) == plain(b.non_tensor_batch[key]), key


def _no_tokens_past_a_stop(tok, out: DataProto, stops=("</search>", "</answer>")) -> None:
    """Every policy segment (a run of response_mask 1) ends at its first closing tag, if it has one."""
    for responses, mask in zip(out.batch["responses"].tolist(), out.batch["response_mask"].tolist()):
        segments, cur = [], []
        for token, m in zip(responses, mask):
            if m:
                cur.append(token)
            elif cur:
                segments.append(cur)
                cur = []
        segments += [cur] if cur else []
        for seg in segments:
            text = tok.decode(seg, skip_special_tokens=True)
            ends = [text.find(s) + len(s) for s in stops if s in text]
            if ends:
                assert text[min(ends):].strip() == "", text


def _run(cls, tok, backend, engine, batch, step=0):
    return cls(tok, backend, _cfg(), noise_schedule=lambda s: 0.5)(batch, engine, GREEDY, step=step)


def test_async_equals_sync_with_local_bm25(engine, batch, world_dir, tmp_path):
    tok, data = batch
    backend = build_search_backend({"mode": "local", "corpus_path": str(world_dir / "corpus.jsonl"),
                                    "index_dir": str(tmp_path / "bm25")})
    try:
        sync = _run(LockstepRollout, tok, backend, engine, data)
        asyn = _run(AgentLoopRollout, tok, backend, engine, data)
    finally:
        backend.close()
    nt = sync.non_tensor_batch
    assert sum(nt["num_searches"]) >= 4 and len(set(nt["num_turns"])) >= 2, nt["response_text"]
    _assert_same(sync, asyn)
    _no_tokens_past_a_stop(tok, asyn)
    m = asyn.meta_info["metrics"]
    assert m["rollout/requests_in_flight/max"] > 1  # trajectories really ran at once
    assert 0 < m["rollout/critical_path_s"] <= m["rollout/wall_s"] + 1e-6
    assert m["rollout/decode_tokens_per_s"] > 0 and m["rollout/search_latency_p99_s"] >= 0


def test_async_equals_sync_with_the_simulation_server(engine, batch, vllm_server):
    tok, data = batch
    backend = build_search_backend({"mode": "simulate_prompt", "ips": vllm_server.url, "simulation_llm": "embedded",
                                    "temperature": 0.0, "max_tokens": 64, "seed": 11})
    try:
        sync = _run(LockstepRollout, tok, backend, engine, data, step=2)
        asyn = _run(AgentLoopRollout, tok, backend, engine, data, step=2)
    finally:
        backend.close()
    assert sum(sync.non_tensor_batch["num_searches"]) >= 4
    assert sync.meta_info["metrics"]["search/noise_p"] == 0.5
    _assert_same(sync, asyn)
    _no_tokens_past_a_stop(tok, asyn)


def test_async_mode_needs_an_engine_with_single_requests(batch, world_dir, tmp_path):
    tok, data = batch

    class BatchOnly:
        def generate(self, prompts, params):
            raise AssertionError("not reached")

    backend = build_search_backend({"mode": "local", "corpus_path": str(world_dir / "corpus.jsonl"),
                                    "index_dir": str(tmp_path / "bm25")})
    try:
        with pytest.raises(ValueError, match=r"rollout\.mode=async.*rollout\.name=vllm"):
            _run(AgentLoopRollout, tok, backend, BatchOnly(), data)
    finally:
        backend.close()


def test_close_is_quiet_and_idempotent(engine):
    """Closing the async engine after use logs no error (vLLM's output task is cancelled before the engine process
    stops; the benchmark's long sessions logged an EngineDeadError traceback at close without that). Last in the
    file: it closes the engine."""
    import dataclasses
    import logging

    class Errors(logging.Handler):
        def __init__(self):
            super().__init__(logging.ERROR)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    errors = Errors()
    vllm_logger = logging.getLogger("vllm")
    vllm_logger.addHandler(errors)
    try:
        assert engine.generate_one([1, 2, 3, 4], dataclasses.replace(GREEDY, max_tokens=4)).token_ids
        engine.close()
        engine.close()
    finally:
        vllm_logger.removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []
    assert engine.llm is None
