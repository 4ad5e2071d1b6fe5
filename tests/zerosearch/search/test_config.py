"""SearchConfig: key-naming errors, IPS parsing, secrets kept out of reprs, mode-specific rules."""

from __future__ import annotations

import pytest

from zerosearch.search import SearchConfig, build_search_backend
from zerosearch.search.config import mask_secret


def test_defaults_and_ips_forms():
    cfg = SearchConfig.from_any(None)
    assert cfg.mode == "simulate_prompt" and cfg.ips == ["127.0.0.1"] and cfg.port == 6001
    assert cfg.simulation_urls == ["http://127.0.0.1:6001"]
    cfg = SearchConfig.from_any({"ips": "10.0.0.1, 10.0.0.2", "port": 7000})
    assert cfg.simulation_urls == ["http://10.0.0.1:7000", "http://10.0.0.2:7000"]
    assert SearchConfig.from_any({"ips": ["a,b", "c"]}).ips == ["a", "b", "c"]
    assert SearchConfig.from_any({"ips": ["http://h:1"]}).simulation_urls == ["http://h:1"]


def test_errors_name_the_key():
    with pytest.raises(ValueError, match=r"search\.topc.*valid keys there:.*topk"):
        SearchConfig.from_any({"topc": 3})
    with pytest.raises(ValueError, match=r"search\.port expects int"):
        SearchConfig.from_any({"port": "6001x"})
    with pytest.raises(ValueError, match=r"search\.mode must be one of"):
        SearchConfig.from_any({"mode": "bing"})
    with pytest.raises(ValueError, match=r"search\.max_retries"):
        SearchConfig.from_any({"max_retries": -1})
    with pytest.raises(ValueError, match=r"search\.use_cache.*simulated"):
        SearchConfig.from_any({"mode": "simulate_sft", "use_cache": True})
    with pytest.raises(ValueError, match=r"search\.retriever_url"):
        SearchConfig.from_any({"mode": "wiki", "retriever_url": "localhost:8000"})
    with pytest.raises(ValueError, match=r"search\.corpus_path 'nope\.jsonl' does not exist"):
        build_search_backend({"mode": "local", "corpus_path": "nope.jsonl"})


def test_cache_defaults_per_mode():
    assert SearchConfig(mode="google").cache_enabled and SearchConfig(mode="wiki").cache_enabled
    assert not SearchConfig(mode="local").cache_enabled and not SearchConfig().cache_enabled
    assert SearchConfig(mode="local", use_cache=True).cache_enabled


def test_serpapi_key_from_env_and_never_shown(monkeypatch):
    for env in ("SER_API_KEY", "SERPAPI_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(ValueError, match="SER_API_KEY.*SERPAPI_API_KEY"):
        build_search_backend({"mode": "google"})
    monkeypatch.setenv("SERPAPI_API_KEY", "k2")
    assert SearchConfig(mode="google").resolve_serpapi_key() == "k2"
    monkeypatch.setenv("SER_API_KEY", "k1")
    assert SearchConfig(mode="google").resolve_serpapi_key() == "k1"
    cfg = SearchConfig(mode="google", serpapi_key="secret-abc")
    assert "secret-abc" not in repr(cfg) and cfg.to_dict()["serpapi_key"] == "***"
    assert mask_secret("GET /search?api_key=secret-abc&q=x", "secret-abc") == "GET /search?api_key=***&q=x"
