"""Collection of simulator fine-tuning rows from a real engine (BM25 over a generated embedded world)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zerosearch.search.base import Doc, SearchRequest
from zerosearch.search.config import SearchConfig
from zerosearch.search.sim_prompts import NOISY, USEFUL, parse_documents
from zerosearch.search.simulate import SimulationBackend
from zerosearch.simulator.collect import (
    Query,
    collect,
    contains_answer,
    from_trajectory_logs,
    label_examples,
    question_split,
    summary,
)


def test_contains_answer_is_whole_word_and_normalised():
    assert contains_answer("He was born in Wasta, in 1902.", ["Wasta"])
    assert not contains_answer("He was born in Wastaford.", ["Wasta"])
    assert contains_answer("the seat is in the hague", ["The Hague"])
    assert contains_answer("Made by A.B. Corp", ["AB Corp"])
    assert not contains_answer("anything", [""])


def _docs(*texts):
    return [Doc(title=f"t{i}", text=t) for i, t in enumerate(texts)]


def test_label_examples_useful_is_the_top_k_and_noisy_the_best_ranked_misses():
    q = Query("where was X born", "Where was X born?", ("Wasta",))
    docs = _docs("X is a writer.", "X was born in Wasta.", "Y lives in Wasta.", "X wrote a book.", "Z is a river.")
    got = dict(label_examples(q, docs, k=2))
    assert [d.text for d in got[USEFUL]] == ["X is a writer.", "X was born in Wasta."]
    assert [d.text for d in got[NOISY]] == ["X is a writer.", "X wrote a book."]
    # answer below the top k: no useful example; too few misses: no noisy one
    assert list(dict(label_examples(q, [docs[0], docs[3], docs[1]], k=2))) == [NOISY]
    assert list(dict(label_examples(q, [docs[1], docs[2], docs[0]], k=2))) == [USEFUL]


def test_collected_rows_match_their_labels_and_the_serve_time_prompt(sft_rows):
    counts = summary(sft_rows)
    assert counts.get("train/useful", 0) > 10 and counts.get("train/noisy", 0) > 10, counts
    client = SimulationBackend(SearchConfig(mode="simulate_sft"))
    try:
        for r in sft_rows:
            target = r["messages"][-1]["content"]
            docs = parse_documents(target, r["k"])
            assert len(docs) == r["k"] == 3
            hits = [contains_answer(f"{d.title} {d.text}", r["golden_answers"]) for d in docs]
            assert any(hits) if r["kind"] == USEFUL else not any(hits), r
            # the prompt a training rollout sends for this query is exactly the one trained on
            req = SearchRequest(r["query"], r["question"], r["golden_answers"])
            assert client.messages(req, r["kind"], r["k"]) == r["messages"][:-1]
    finally:
        client.close()


def test_split_is_per_question_and_stable(sft_rows):
    by_question: dict[str, set] = {}
    for r in sft_rows:
        by_question.setdefault(r["question"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_question.values())
    assert {r["split"] for r in sft_rows} == {"train", "val"}
    assert all(question_split(q, 0.2) == next(iter(s)) for q, s in by_question.items())


def test_trajectory_log_queries_keep_their_own_question(tmp_path, bm25, train_questions):
    a, b = train_questions[0], train_questions[1]
    log = tmp_path / "train_generations.jsonl"
    log.write_text("\n".join(json.dumps({"step": 1, "question": r["question"],
                                         "golden_answers": list(r["golden_answers"]),
                                         "search_queries": [r["question"], ""]}) for r in (a, b)) + "\n")
    queries = list(from_trajectory_logs([log]))
    assert [(q.query, q.question) for q in queries] == [(a["question"], a["question"]), (b["question"], b["question"])]
    rows = collect(queries, bm25, k=3)
    assert {r["question"] for r in rows} <= {a["question"], b["question"]}
    with pytest.raises(FileNotFoundError, match="log_train_generations"):
        list(from_trajectory_logs([tmp_path / "missing.jsonl"]))
    log.write_text("{not json\n")
    with pytest.raises(ValueError, match=":1: not JSON"):
        list(from_trajectory_logs([log]))


def test_cli_collect_writes_rows_and_refuses_a_simulator(tmp_path, sim_world):
    out = tmp_path / "sft.jsonl"
    base = [sys.executable, "-m", "zerosearch.simulator", "collect", "--out", str(out), "--questions",
            str(sim_world / "train.parquet"), "--max-questions", "10"]
    corpus = f"corpus_path={sim_world / 'corpus.jsonl'}"
    done = subprocess.run([*base, "--search", "mode=local", corpus, f"index_dir={tmp_path / 'idx'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and json.loads(done.stdout.strip().splitlines()[-1])["queries"] == 10
    bad = subprocess.run([*base, "--search", "mode=simulate_prompt"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "needs a real engine" in bad.stderr
    bad = subprocess.run([*base, "--search", "corpus=x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown --search key(s) ['corpus']" in bad.stderr


def test_train_simulator_script_rejects_unknown_keys():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(["bash", str(root / "scripts" / "train_simulator.sh"), "EPOCH", "2"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown key 'EPOCH'" in done.stderr and "EPOCHS" in done.stderr
