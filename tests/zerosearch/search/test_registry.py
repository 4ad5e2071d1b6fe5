"""Search backends by name: a backend added in this file (one decorated class) answers a rollout built by the
trainer's factory; the valid modes and their errors come from the registry; keys that do nothing are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl.protocol import DataProto
from verl.trainer.config import ConfigError, load_config
from verl.workers.rollout import SamplingParams, build_rollout_engine
from zerosearch.data.prompts import build_prompt
from zerosearch.rollout.factory import make_search_rollout_fn, val_search_config
from zerosearch.search import Doc, SearchConfig, SearchResult, build_search_backend, register_backend
from zerosearch.search.metrics import MeteredBackend, SearchMetrics
from zerosearch.search.registry import modes, simulated_modes

QUESTION = "Where was Grikorn Shivis born?"


@register_backend("echo_test", keys=("seed",))
class EchoBackend(MeteredBackend):
    """Answers every query with one document that repeats it; records the requests."""

    name = "echo_test"

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.metrics = SearchMetrics()
        self.requests: list = []

    def search(self, requests, topk):
        self.requests += requests
        return self._recorded(requests, [SearchResult(docs=[Doc("Echo", f"echo of {r.query.strip()}")])
                                         for r in requests])

    def close(self) -> None:
        pass


def _config(search: dict):
    return load_config({"search": search, "trainer": {"total_training_steps": 1},
                        "data": {"max_prompt_length": 400, "max_response_length": 64, "max_obs_length": 32}})


def test_registered_modes_and_their_errors():
    assert modes()[:5] == ("simulate_prompt", "simulate_sft", "google", "wiki", "local")
    assert "echo_test" in modes() and simulated_modes() == ("simulate_prompt", "simulate_sft")
    with pytest.raises(ConfigError, match=r"search\.mode must be one of simulate_prompt, .*echo_test, got 'bing'"):
        SearchConfig.from_any({"mode": "bing"})
    with pytest.raises(ValueError, match="already registered"):
        register_backend("local")(EchoBackend)
    assert isinstance(build_search_backend({"mode": "echo_test"}), EchoBackend)
    assert not SearchConfig(mode="echo_test").cache_enabled and not SearchConfig(mode="echo_test").simulated


NEW_FILE = """
from zerosearch.search import SearchResult, register_backend
from zerosearch.search.metrics import MeteredBackend, SearchMetrics


@register_backend("dropped_in", keys=("seed",))
class DroppedIn(MeteredBackend):
    name = "dropped_in"

    def __init__(self, cfg):
        self.metrics = SearchMetrics()

    def search(self, requests, topk):
        return self._recorded(requests, [SearchResult(docs=[]) for _ in requests])

    def close(self):
        pass
"""


def test_a_backend_in_a_new_file_registers_with_nothing_else_edited():
    """The README's "extend" steps: a new module in zerosearch/search/ is found by importing the package, and the
    launcher's checks accept its mode."""
    package = Path(__file__).resolve().parents[3] / "zerosearch" / "search"
    for stale in package.glob("_dropped_in_*.py"):  # left by an earlier run that was killed
        stale.unlink()
    path = package / f"_dropped_in_{os.getpid()}.py"
    path.write_text(NEW_FILE)
    try:
        out = subprocess.run([sys.executable, "-c", (
            "from zerosearch.search import build_search_backend; from zerosearch.search.registry import modes; "
            "from zerosearch.launch import build_overrides, parse_args; "
            "b = build_search_backend({'mode': 'dropped_in'}); "
            "ov = build_overrides(parse_args('grpo', ['SEARCH_MODE', 'dropped_in', 'SEARCH_ENGINE', 'local']), "
            "gpu=False); "
            "print(type(b).__name__, modes()[:5], modes()[-1], 'search.mode=dropped_in' in ov)")],
            capture_output=True, text=True, timeout=120)
    finally:
        path.unlink()
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split(maxsplit=1)[0] == "DroppedIn"
    assert "('simulate_prompt', 'simulate_sft', 'google', 'wiki', 'local') dropped_in True" in out.stdout


def test_a_new_backend_answers_the_factory_rollout(embedded_model_path):
    threads = torch.get_num_threads()
    engine = build_rollout_engine("hf", embedded_model_path, max_model_len=2048, cpu_threads=1)
    try:
        tok = engine.tokenizer
        rollout = make_search_rollout_fn(_config({"mode": "echo_test", "max_turns": 1, "topk": 1}), tok)
        backend = rollout.managers[False].backend
        assert isinstance(backend, EchoBackend)
        prompt = tok.apply_chat_template(build_prompt(QUESTION), tokenize=False, add_generation_prompt=True)
        ids = tok.encode(prompt + "<search> Grikorn Shivis birthplace.", add_special_tokens=False)
        batch = DataProto.from_dict(non_tensors={"prompt_ids": [ids], "question": [QUESTION],
                                                 "golden_answers": [["x"]]})
        out = rollout(batch, engine, SamplingParams(temperature=0.0, max_tokens=64), step=0)
        rollout.close()
    finally:
        torch.set_num_threads(threads)
    assert [r.question for r in backend.requests] == [QUESTION]
    assert backend.requests[0].noise_p == 0.0  # a real engine: no curriculum
    assert "echo of Grikorn Shivis birthplace" in out.non_tensor_batch["response_text"][0]


@pytest.mark.parametrize("search, needle", [
    ({"mode": "local", "retriever_url": "http://h:1"}, r"search\.retriever_url='http://h:1' does nothing: "
                                                       r"search\.mode=local reads corpus_path, index_dir"),
    ({"mode": "local", "start_threshold": 0.3}, r"search\.start_threshold=0\.3 does nothing: .*real engine"),
    ({"mode": "simulate_prompt", "val_mode": "local", "serp_answer_box": True},
     r"search\.serp_answer_box=True does nothing: .*search\.val_mode=local reads corpus_path"),
    ({"mode": "local", "val": {"port": 7000}}, r"search\.val\.port=7000 does nothing"),
])
def test_keys_that_do_nothing_are_refused(search, needle):
    with pytest.raises(ConfigError, match=needle):
        make_search_rollout_fn(_config(search), tokenizer=None)  # refused before anything is built


def test_keys_at_their_defaults_or_read_by_one_backend_pass():
    # the launcher passes every key; at its default a key is harmless, and a key the validation engine reads is used
    cfg = _config({"mode": "simulate_sft", "val_mode": "local", "corpus_path": "data/embedded/corpus.jsonl",
                   "retriever_url": "http://127.0.0.1:8000", "port": 7000, "start_threshold": 0.0})
    assert val_search_config(cfg).mode == "local"
    assert val_search_config(_config({"mode": "wiki", "retriever_url": "http://h:1"})).retriever_url == "http://h:1"
