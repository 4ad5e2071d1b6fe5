"""Fuzzing (hypothesis) of every parser that reads text a model, a server or a user wrote: no crash on arbitrary
input, and the few properties each output must keep. Parsers: the action parser (tags and tool calls), the
simulator reply parser (chat-completions body -> text -> documents), answer extraction and normalisation with the
rewards built on it, the train scripts' KEY VALUE parser, and the retriever's request handling (any body: 2xx or
4xx, never 500)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zerosearch.launch import KEYS, UsageError, parse_key_values
from zerosearch.reward import check_format, exact_match, extract_answer, f1_score, normalize_answer, substring_match
from zerosearch.rollout.actions import ACTION_FORMATS, parse_action
from zerosearch.search.sim_prompts import parse_documents
from zerosearch.search.simulate import chat_content

# the same examples on every run (CI must not fail by chance); ZEROSEARCH_FUZZ_EXPLORE=1 draws new ones each run
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=os.environ.get("ZEROSEARCH_FUZZ_EXPLORE") != "1")
TAGS = ["<search>", "</search>", "<answer>", "</answer>", "<information>", "</information>", "<think>", "</think>",
        "<tool_call>", "</tool_call>", '{"name": "search", "arguments": {"query": "q"}}', "Doc 1", "(Title: t)",
        "\n", " ", "<|im_end|>", "Doc 2(Title:", "text:"]
# text biased towards the markup the parsers look for, mixed with arbitrary unicode
marked_text = st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=12)), max_size=30).map("".join)
any_text = st.one_of(marked_text, st.text(max_size=300))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["choices", "message", "content", "finish_reason", "index", "x", "query", "queries", "topk", "top_k",
         "return_scores"]), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(text=any_text, prefer_answer=st.booleans(), fmt=st.sampled_from(sorted(ACTION_FORMATS)))
def test_action_parser(text, prefer_answer, fmt):
    kind, content = ACTION_FORMATS[fmt].parse(text, prefer_answer)
    assert kind in (None, "search", "answer") and isinstance(content, str)
    if kind is None:
        assert content == ""
    if kind == "search":
        assert content and content == content.strip()
    suffix = ACTION_FORMATS[fmt].open_suffix(text)
    assert text.endswith(suffix)
    if fmt == "tags":
        assert parse_action(text, prefer_answer) == (kind, content)


@FUZZ
@given(text=any_text, k=st.integers(1, 10), max_chars=st.integers(16, 400))
def test_document_parser(text, k, max_chars):
    docs = parse_documents(text, k, max_chars)
    assert len(docs) <= k
    for d in docs:
        assert isinstance(d.title, str) and isinstance(d.text, str)
        assert 3 <= len(d.text) <= max_chars


@FUZZ
@given(answer=json_values)
def test_simulator_reply_parser(answer):
    """Any JSON body: text, or a RuntimeError that the backend turns into a counted failure; never another error."""
    try:
        text = chat_content(answer, "http://sim")
    except RuntimeError as exc:
        assert "http://sim" in str(exc)
        return
    assert isinstance(text, str) and text.strip()
    parse_documents(text, 3)


@FUZZ
@given(response=any_text, golds=st.one_of(any_text, st.lists(st.one_of(any_text, st.none()), max_size=4),
                                          st.dictionaries(st.just("target"), st.lists(any_text, max_size=3))))
def test_answer_extraction_normalisation_and_rewards(response, golds):
    pred = extract_answer(response)
    assert pred is None or (isinstance(pred, str) and pred == pred.strip())
    check_format(response)
    check_format(response, strict=True)
    norm = normalize_answer(response)
    assert normalize_answer(norm) == norm and norm == norm.strip()
    for metric in (exact_match, substring_match, f1_score):
        assert 0.0 <= metric(pred, golds) <= 1.0
    assert exact_match(response, [response]) == 1.0 and f1_score(response, [response]) == 1.0


KEY_WORDS = sorted(KEYS)


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(KEY_WORDS), st.text(max_size=10),
                               st.builds(lambda k, v: f"{k}={v}", st.text(max_size=8), st.text(max_size=8)),
                               st.sampled_from(["-h", "--help", "=x", "true", "0"])), max_size=12),
       allow_words=st.booleans())
def test_key_value_parser(argv, allow_words):
    try:
        values, overrides, words = parse_key_values(argv, KEYS, allow_words=allow_words)
    except UsageError as exc:
        assert str(exc)
        return
    assert set(values) == set(KEYS)
    assert all("=" in o for o in overrides) and all(o in argv for o in overrides)
    assert all(w in argv for w in words) and (allow_words or not words)


@pytest.fixture(scope="module")
def retriever_client(tmp_path_factory):
    from starlette.testclient import TestClient

    from zerosearch.retriever.index import BM25Index
    from zerosearch.retriever.server import create_app

    path = tmp_path_factory.mktemp("fuzz") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "contents": f'"T{i}"\npassage number {i} about x'}) + "\n"
                            for i in range(5)))
    app = create_app(BM25Index.from_corpus(path, tmp_path_factory.mktemp("idx")), max_body_bytes=64 * 1024)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                      st.integers(1, 3000).map(lambda n: b'{"queries": ' + b"[" * n + b"]" * n + b"}")))
def test_retriever_request_handling(retriever_client, body):
    resp = retriever_client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert resp.status_code in (200, 400, 413, 422), (resp.status_code, resp.text[:300])
    if resp.status_code == 200:
        assert isinstance(resp.json()["result"], list)
