"""The evaluation's cost accounting with `SEARCH_ENGINE google`: the real serpapi client against a loopback server
in SerpAPI's JSON shape. A second evaluation of the same questions is served from the search cache: it reports
the same searches and no request sent. The API key reaches no file the evaluation writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def test_google_calls_sent_and_cache_hits_are_counted_apart(serp_server, tmp_path):
    world = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(world), "--entities", "1000",
                    "--train", "16", "--test", "8"], check=True, capture_output=True)
    env = {**os.environ, "SER_API_KEY": serp_server.key, "SERPAPI_BASE_URL": serp_server.url,
           "PYTHON": sys.executable}

    def evaluate(out: Path) -> dict:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "evaluate.sh"), "DATA_PATH", str(world / "test.parquet"),
             "SEARCH_ENGINE", "google", "ROLLOUT", "hf", "MAX_SAMPLES", "2", "OUT", str(out),
             f"+search.cache_path={tmp_path / 'cache.sqlite'}",
             "data.assistant_prefix='<search>'"],  # every trajectory opens with a search
            capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for name in ("summary.json", "settings.json", "eval.log", "trajectories.jsonl", "table.md"):
            assert serp_server.key not in (out / name).read_text(), name
        summary = json.loads((out / "summary.json").read_text())
        return {**summary["cost"], "questions": summary["questions"]}

    first = evaluate(tmp_path / "a")
    sent = len(serp_server.requests)
    assert first["questions"] == 4 and first["searches"] >= 1 and first["search_calls"] >= first["searches"]
    assert first["engine_calls_sent"] == first["search_calls"] - first["cache_hits"] == sent
    second = evaluate(tmp_path / "b")
    assert len(serp_server.requests) == sent  # nothing new went out
    assert second["searches"] == first["searches"]
    assert second["cache_hits"] == second["search_calls"] and second["engine_calls_sent"] == 0
