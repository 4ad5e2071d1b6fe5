"""Retriever server: both request payloads, health, input errors, the CLI and its launch script."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from zerosearch.retriever.index import BM25Index, load_corpus, split_contents
from zerosearch.retriever.server import create_app, free_port, start_in_thread

ROOT = Path(__file__).resolve().parents[3]
PASSAGES = [
    ("Velmora", "Velmora is the capital city of the Republic of Ostrana."),
    ("Dario Fenwick", "Dario Fenwick was a shipbuilder who founded Fenwick Shipping in 1881."),
    ("Mount Ketter", "Mount Ketter is the highest mountain of Ostrana."),
    ("Port Aldane", "Port Aldane is a harbour city with a large fish market."),
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"id": str(i), "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(PASSAGES)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def server(corpus, tmp_path):
    srv = start_in_thread(create_app(BM25Index.from_corpus(corpus, tmp_path / "idx"), default_topk=2))
    yield srv
    srv.stop()


def test_search_r1_payload(server):
    body = {"queries": ["highest mountain of Ostrana", "who founded Fenwick Shipping"], "topk": 2,
            "return_scores": True}
    result = httpx.post(server.url + "/retrieve", json=body).json()["result"]
    assert len(result) == 2
    assert result[0][0]["document"] == {"id": "2", "contents": '"Mount Ketter"\n' + PASSAGES[2][1]}
    assert result[0][0]["score"] > 0 and len(result[0]) <= 2
    assert split_contents(result[1][0]["document"]["contents"])[0] == "Dario Fenwick"
    bare = httpx.post(server.url + "/retrieve", json={"queries": ["fish market"], "topk": 1}).json()["result"]
    assert bare == [[{"id": "3", "contents": '"Port Aldane"\n' + PASSAGES[3][1]}]]


def test_zerosearch_single_payload_and_default_topk(server):
    out = httpx.post(server.url + "/retrieve", json={"query": "capital city of Ostrana", "top_k": 1}).json()
    assert out["query"] == "capital city of Ostrana" and len(out["result"]) == 1
    assert out["result"][0]["document"]["id"] == "0" and out["result"][0]["score"] > 0
    out = httpx.post(server.url + "/retrieve", json={"query": "Ostrana"}).json()
    assert len(out["result"]) == 2  # the server's default k
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "passages": 4, "retriever": "bm25"}


@pytest.mark.parametrize("body, fragment", [
    ({"queries": "not a list", "topk": 2}, "'queries' must be a list"),
    ({"queries": ["x"], "topk": 0}, "'topk' must be an integer"),
    ({"query": 3}, "'query' must be a string"),
    ({"q": "x"}, "expected"),
])
def test_bad_payloads_are_explained(server, body, fragment):
    resp = httpx.post(server.url + "/retrieve", json=body)
    assert resp.status_code == 422 and fragment in resp.text


def test_corpus_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "contents": "\\"T\\"\\nx"}\n{"id": "2", "body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: a passage needs a 'contents' field"):
        load_corpus(bad)
    alt = tmp_path / "alt.jsonl"
    alt.write_text('{"id": "7", "title": "T", "text": "body"}\n')
    assert load_corpus(alt)[0].title_text == ("T", "body")


def test_index_cache_is_keyed_by_corpus_content(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSEARCH_CACHE", str(tmp_path / "cache"))
    BM25Index.from_corpus(corpus)
    (first,) = [d for d in (tmp_path / "cache" / "bm25").iterdir() if d.is_dir()]
    assert (first / "zerosearch_index.json").exists()
    with corpus.open("a") as f:
        f.write(json.dumps({"id": "9", "contents": '"Zebra"\nA zebra passage.'}) + "\n")
    index = BM25Index.from_corpus(corpus)
    assert index.search(["zebra"], 1)[0][0][0].id == "9"
    assert len([d for d in (tmp_path / "cache" / "bm25").iterdir() if d.is_dir()]) == 2


def test_dense_without_extras_is_a_clear_error(corpus):
    pytest.importorskip("torch")
    try:
        import faiss  # noqa: F401
        pytest.skip("faiss installed")
    except ImportError:
        pass
    from zerosearch.retriever.server import load_index

    with pytest.raises(ImportError, match=r"zerosearch\[dense\]"):
        load_index(str(corpus), "dense", dense_model="/nonexistent")


def test_cli_serves_the_corpus(corpus, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerosearch.retriever.server", "--corpus", str(corpus), "--port", str(port),
         "--index-dir", str(tmp_path / "cli-idx")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "retriever CLI did not come up"
            time.sleep(0.3)
        out = httpx.post(f"http://127.0.0.1:{port}/retrieve", json={"query": "fish market", "top_k": 1}).json()
        assert out["result"][0]["document"]["id"] == "3"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_launch_script_rejects_unknown_keys():
    out = subprocess.run(["bash", str(ROOT / "scripts/launch_retriever.sh"), "CORPSE", "x"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "unknown key 'CORPSE'" in out.stderr and "CORPUS" in out.stderr
    out = subprocess.run(["bash", str(ROOT / "scripts/launch_simulation_server.sh"), "PORTT", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown key 'PORTT'" in out.stderr and "SERVED_NAME" in out.stderr
    out = subprocess.run(["bash", str(ROOT / "scripts/launch_simulation_server.sh"), "PORT", "abc"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "PORT must be a positive integer" in out.stderr
