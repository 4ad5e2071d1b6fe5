"""The search-backend tests' tiny corpus and a real retriever server over it. The loopback chat-completions and
SerpAPI servers (`chat_server`, `chat_server_pair`, `serp_server`) are in tests/conftest.py, shared with the
reliability suite."""

from __future__ import annotations

import json

import pytest

TINY_CORPUS = [
    ("p0", "Velmora", "Velmora is the capital city of the Republic of Ostrana, on the river Quell."),
    ("p1", "Dario Fenwick", "Dario Fenwick was a shipbuilder born in Velmora who founded Fenwick Shipping in 1881."),
    ("p2", "Fenwick Shipping", "Fenwick Shipping is a shipping company headquartered in Port Aldane."),
    ("p3", "Mount Ketter", "Mount Ketter is the highest mountain of Ostrana, rising to 4,102 metres."),
    ("p4", "The Quell Letters", "The Quell Letters is a novel written by the poet Imre Salk in 1902."),
    ("p5", "Port Aldane", "Port Aldane is a harbour city in the north of Ostrana with a large fish market."),
]


@pytest.fixture
def tiny_corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in TINY_CORPUS))
    return path


@pytest.fixture
def retriever(tiny_corpus, tmp_path):
    """A real retriever server on loopback (`.url`, `.stop()`) over the tiny corpus."""
    from zerosearch.retriever.index import BM25Index
    from zerosearch.retriever.server import create_app, start_in_thread

    server = start_in_thread(create_app(BM25Index.from_corpus(tiny_corpus, tmp_path / "index")))
    yield server
    server.stop()
