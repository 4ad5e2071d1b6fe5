"""Retriever server against hostile input: body size limit (413), deep JSON (400, not 500), bad launch settings
(TOPK 0, PORT 99999) refused before the index loads, and loopback as the default bind address."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from zerosearch.retriever.index import BM25Index
from zerosearch.retriever.server import MAX_BODY_BYTES, create_app, free_port, start_in_thread

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rows = [{"id": "0", "contents": '"Velmora"\nVelmora is the capital city of Ostrana.'},
            {"id": "1", "contents": '"Mount Ketter"\nMount Ketter is the highest mountain of Ostrana.'}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def server(corpus, tmp_path_factory):
    srv = start_in_thread(create_app(BM25Index.from_corpus(corpus, tmp_path_factory.mktemp("idx"))))
    yield srv
    srv.stop()


def _post(url: str, content, **kw) -> httpx.Response:
    return httpx.post(url + "/retrieve", content=content, headers={"content-type": "application/json"}, timeout=30,
                      **kw)


def _big_body(n_bytes: int) -> bytes:
    return json.dumps({"queries": ["mountain " * 100] * (n_bytes // 900 + 1), "topk": 1}).encode()


def test_a_10mb_body_is_refused_fast_with_413(server):
    """Before the limit: 7.8 s for one 10 MB body, ~50 s each for four at once."""
    body = _big_body(10 * 1024 * 1024)
    t0 = time.monotonic()
    resp = _post(server.url, body)
    assert resp.status_code == 413 and "--max-body-bytes" in resp.text and time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: _post(server.url, body).status_code, range(4)))
    assert codes == [413] * 4 and time.monotonic() - t0 < 4.0


def test_a_chunked_body_is_cut_at_the_limit(server):
    body = _big_body(3 * 1024 * 1024)
    resp = _post(server.url, iter(body[i:i + 65536] for i in range(0, len(body), 65536)))  # no Content-Length
    assert resp.status_code == 413 and "send fewer or shorter queries" in resp.text


def test_a_body_just_under_the_limit_is_served(server):
    body = json.dumps({"queries": ["highest mountain"], "topk": 1}).encode()
    body = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    resp = _post(server.url, body)
    assert resp.status_code == 200 and resp.json()["result"][0][0]["id"] == "1"


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deeply_nested_json_is_a_400_not_a_500(server, depth):
    resp = _post(server.url, ('{"queries": ' + "[" * depth + "]" * depth + "}").encode())
    assert resp.status_code == 400 and "nested too deeply" in resp.text
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("content, status, fragment", [
    (b'{"queries": [[["x"]]]}', 422, "'queries' must be a list of strings"),
    (b'[[[[["x"]]]]]', 422, "body must be a JSON object"),
    (b'{"queries": ["x"', 400, "body is not JSON"),
    (b"\xff\xfe", 400, "body is not JSON"),
    (b"", 400, "body is not JSON"),
])
def test_malformed_bodies_are_client_errors(server, content, status, fragment):
    resp = _post(server.url, content)
    assert resp.status_code == status and fragment in resp.text


@pytest.mark.parametrize("topk", [0, -1, 1001, True])
def test_create_app_refuses_a_bad_default_topk(topk):
    with pytest.raises(ValueError, match=r"default topk \(--topk / TOPK\) must be an integer in \[1, 1000\]"):
        create_app(object(), default_topk=topk)


@pytest.mark.parametrize("args, says", [
    (["TOPK", "0"], "TOPK must be an integer in [1, 1000]"),
    (["TOPK", "x"], "TOPK must be an integer in [1, 1000]"),
    (["TOPK", "99999999999999999999"], "TOPK must be an integer in [1, 1000]"),
    (["PORT", "99999"], "PORT must be a TCP port in [1, 65535]"),
    (["PORT", "0"], "PORT must be a TCP port in [1, 65535]"),
])
def test_launch_script_refuses_bad_settings_at_once(corpus, args, says):
    out = subprocess.run(["bash", str(ROOT / "scripts/launch_retriever.sh"), "CORPUS", str(corpus), *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and says in out.stderr and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize("args, says", [
    (["--topk", "0"], "argument --topk: must be an integer in [1, 1000], got 0"),
    (["--port", "99999"], "argument --port: must be an integer in [1, 65535], got 99999"),
    (["--max-body-bytes", "10"], "argument --max-body-bytes: must be an integer in [1024,"),
])
def test_cli_refuses_bad_settings_before_loading(args, says):
    out = subprocess.run([sys.executable, "-m", "zerosearch.retriever.server", "--corpus", "/nonexistent", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr


def test_servers_bind_loopback_unless_told_otherwise(corpus, tmp_path):
    for script in ("launch_retriever.sh", "launch_simulation_server.sh"):
        assert " HOST=127.0.0.1 " in (ROOT / "scripts" / script).read_text(), script
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zerosearch.retriever.server", "--corpus", str(corpus), "--port",
                             str(port), "--index-dir", str(tmp_path / "idx")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        listening: list = []
        while not listening:
            assert proc.poll() is None and time.monotonic() < deadline, "retriever CLI did not come up"
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections()
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
            time.sleep(0.2)
        assert [a.ip for a in listening] == ["127.0.0.1"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
