"""Local retrieval server (FastAPI) over a passage corpus: what the `wiki` search backend talks to.

The original ZeroSearch shipped no retriever; this one speaks both payloads users already send:

* Search-R1's batch form: `POST /retrieve {"queries": [...], "topk": k, "return_scores": true}`
  -> `{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}` (one list per query;
  with `return_scores: false` each list holds the bare documents, as in Search-R1).
* ZeroSearch's single form: `POST /retrieve {"query": "...", "top_k": k}`
  -> `{"query": "...", "result": [{"document": {...}, "score": s}, ...]}`.

`GET /health` -> `{"status": "ok", "passages": N, "retriever": "bm25"}`.
CLI: `python -m zerosearch.retriever.server --corpus PATH [--port 8000] [--host 127.0.0.1]
[--retriever bm25|dense] [--dense-model DIR] [--topk 3] [--max-body-bytes 2097152]`. `start_in_thread` runs an app
on loopback for tests and CPU evaluation. Both bind 127.0.0.1 unless given another host.

Hostile input: a body over `max_body_bytes` is refused with 413 before it is read (by its Content-Length) or as
soon as the streamed part passes the limit; a body that is not JSON, or nested too deeply for the parser, is a
400; a well-formed body of the wrong shape is a 422. None of them is a 500.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)

MAX_QUERIES = 4096
MAX_TOPK = 1000
MAX_BODY_BYTES = 2 * 1024 * 1024  # 4096 queries of 500 bytes; Search-R1 batches are far smaller


def create_app(index: Any, name: str = "bm25", default_topk: int = 3, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """FastAPI app answering /retrieve and /health from `index` (anything with `search(queries, k)`)."""
    if isinstance(default_topk, bool) or not isinstance(default_topk, int) or not 1 <= default_topk <= MAX_TOPK:
        raise ValueError(f"the retriever's default topk (--topk / TOPK) must be an integer in [1, {MAX_TOPK}], "
                         f"got {default_topk!r}")
    if max_body_bytes < 1024:
        raise ValueError(f"--max-body-bytes must be >= 1024, got {max_body_bytes}")
    app = FastAPI(title="ZeroSearch retriever")

    def _topk(value: Any, key: str) -> int:
        if value is None:
            return default_topk
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOPK:
            raise HTTPException(422, f"'{key}' must be an integer in [1, {MAX_TOPK}], got {value!r}")
        return value

    def _hits(rows, with_scores: bool) -> list:
        return [{"document": p.to_json(), "score": s} if with_scores else p.to_json() for p, s in rows]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "passages": len(index.passages), "retriever": name}

    async def _json_body(request: Request) -> Any:
        too_big = HTTPException(413, f"request body over {max_body_bytes} bytes (the server's --max-body-bytes); "
                                     f"send fewer or shorter queries per call")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body_bytes:
            raise too_big
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_body_bytes:
                raise too_big
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise HTTPException(400, f"body is not JSON: {why}") from None

    @app.post("/retrieve")
    async def retrieve(request: Request) -> dict:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise HTTPException(422, "body must be a JSON object")
        if "queries" in body:
            queries = body["queries"]
            if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
                raise HTTPException(422, "'queries' must be a list of strings")
            if len(queries) > MAX_QUERIES:
                raise HTTPException(422, f"at most {MAX_QUERIES} queries per call, got {len(queries)}")
            k = _topk(body.get("topk", body.get("top_k")), "topk")
            rows = await run_in_threadpool(index.search, queries, k)
            return {"result": [_hits(r, bool(body.get("return_scores", False))) for r in rows]}
        if "query" in body:
            if not isinstance(body["query"], str):
                raise HTTPException(422, "'query' must be a string")
            k = _topk(body.get("top_k", body.get("topk")), "top_k")
            (rows,) = await run_in_threadpool(index.search, [body["query"]], k)
            return {"query": body["query"], "result": _hits(rows, True)}
        raise HTTPException(
            422, 'expected {"queries": [...], "topk": k, "return_scores": true} or {"query": "...", "top_k": k}'
        )

    return app


def load_index(corpus: str, retriever: str = "bm25", dense_model: str | None = None, index_dir: str | None = None):
    from zerosearch.retriever.index import BM25Index, DenseIndex, load_corpus

    if retriever == "bm25":
        return BM25Index.from_corpus(corpus, index_dir)
    if retriever == "dense":
        if not dense_model:
            raise ValueError("--retriever dense needs --dense-model DIR (an e5-style sentence-transformers model)")
        return DenseIndex(load_corpus(corpus), dense_model)
    raise ValueError(f"--retriever must be bm25 or dense, got {retriever!r}")


# ---------------------------------------------------------------------------------------------
# running on loopback

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ThreadedServer:
    server: Any
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 20.0):
    """Serve `app` with uvicorn in a daemon thread; returns once it accepts connections."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on {host}:{port} did not start within {timeout_s}s")
        time.sleep(0.02)
    return ThreadedServer(server, thread, f"http://{host}:{port}")


def _ranged(lo: int, hi: int):
    """argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ZeroSearch local retrieval server (Search-R1 /retrieve API)")
    ap.add_argument("--corpus", required=True, help="passage JSONL: {'id', 'contents': '\"Title\"\\ntext'}")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=_ranged(1, 65535), default=8000)
    ap.add_argument("--retriever", default="bm25", choices=["bm25", "dense"])
    ap.add_argument("--dense-model", default=None, help="e5-style sentence-transformers model dir (dense only)")
    ap.add_argument("--index-dir", default=None, help="where the BM25 index is cached (default: the cache dir)")
    ap.add_argument("--topk", type=_ranged(1, MAX_TOPK), default=3, help="default k when a request gives none")
    ap.add_argument("--max-body-bytes", type=_ranged(1024, 1 << 30), default=MAX_BODY_BYTES,
                    help="larger request bodies are refused with HTTP 413")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    index = load_index(args.corpus, args.retriever, args.dense_model, args.index_dir)
    logger.info("serving %d passages (%s) on http://%s:%d", len(index.passages), args.retriever, args.host, args.port)
    app = create_app(index, args.retriever, args.topk, args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
