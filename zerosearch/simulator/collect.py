"""Collect fine-tuning data for a search simulator from a real engine.

The paper fine-tunes its simulation LLM on (query -> documents) pairs gathered from a real search engine, each
labelled useful or noisy, so that at training time one short prompt with a useful/noisy switch produces either
kind. Here, for every (query, question, gold answers) we ask a real engine (any `SearchBackend`: local BM25, a
wiki retriever, Google) for its `depth` best documents and label each document by whether it contains a gold
answer (SQuAD-normalised, whole words):

- useful example: the engine's top k, kept only when there are k and at least one contains an answer;
- noisy example: the k best-ranked documents that contain no answer: they are what the engine finds for the
  query (same wording, same entities) without settling the question.

Departure from the paper: it labels documents by whether the trajectory that read them reached the right answer.
A small policy fails most trajectories for reasons unrelated to the documents, so we label each document by
containment, which is what "useful" and "noisy" ask of the simulator at serve time, and needs no policy run.

Queries come from the questions themselves (`from_questions`) and/or from the `search_queries` a policy wrote
in the trainer's trajectory logs (`from_trajectory_logs`: `logs/train_generations.jsonl` written with
`trainer.log_train_generations=N`, or `val_generations.jsonl`), i.e. the queries the simulator will be asked.

Output rows (`write_jsonl`): `{"messages": [user, assistant], "kind", "k", "query", "question", "golden_answers",
"data_source", "split"}`; `messages` is the chat form that LLaMA-Factory, TRL's SFTTrainer and our `sft` read, in
the exact `simulate_sft` format of `zerosearch.search.sim_prompts`. The split is drawn per question (a hash), so
validation rows ask about questions the simulator never saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from verl.utils.plain import iter_jsonl
from zerosearch.reward import _as_gold_list, normalize_answer
from zerosearch.search.base import Doc, SearchBackend, SearchRequest
from zerosearch.search.sim_prompts import NOISY, USEFUL, sft_messages, sft_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    query: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str = ""


def contains_answer(text: str, golds: Iterable[str]) -> bool:
    """True when a normalised gold answer occurs in the normalised text as whole words ("Wasta" does not match
    "Wastaford")."""
    padded = f" {normalize_answer(text)} "
    return any(g and f" {g} " in padded for g in (normalize_answer(x) for x in golds))


def question_split(question: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of questions (by hash), else 'train'."""
    h = int(hashlib.sha1(question.strip().lower().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def from_questions(rows: Iterable[dict]) -> Iterator[Query]:
    """One query per question: the question text (rows in the parquet schema: question, golden_answers)."""
    for r in rows:
        golds = tuple(_as_gold_list(r.get("golden_answers")))
        if r.get("question") and golds:
            yield Query(str(r["question"]).strip(), str(r["question"]).strip(), golds, str(r.get("data_source", "")))


def from_trajectory_logs(paths: Iterable[str | Path]) -> Iterator[Query]:
    """The `search_queries` of every logged trajectory, with that trajectory's own question and answers."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such trajectory log (write one with trainer.log_train_generations=N;"
                                    " it lands in <checkpoint dir>/logs/train_generations.jsonl)")
        for _, rec in iter_jsonl(path):
            golds = tuple(_as_gold_list(rec.get("golden_answers")))
            question = str(rec.get("question") or "").strip()
            for q in rec.get("search_queries") or []:
                if str(q).strip() and question and golds:
                    yield Query(str(q).strip(), question, golds, str(rec.get("data_source", "")))


def label_examples(q: Query, docs: list[Doc], k: int) -> list[tuple[str, list[Doc]]]:
    """(kind, documents) examples for one query from the engine's ranked `docs` (see the module docstring)."""
    hits = [contains_answer(f"{d.title} {d.text}", q.golden_answers) for d in docs]
    out = []
    if len(docs) >= k and any(hits[:k]):  # the prompt asks for exactly k documents
        out.append((USEFUL, docs[:k]))
    misses = [d for d, hit in zip(docs, hits) if not hit][:k]
    if len(misses) == k:
        out.append((NOISY, misses))
    return out


def collect(queries: Iterable[Query], backend: SearchBackend, k: int, depth: int = 20, val_fraction: float = 0.1,
            batch_size: int = 64) -> list[dict]:
    """SFT rows for every distinct query (ranked documents from `backend`, `depth` deep, labelled per document)."""
    if k < 1 or depth < k:
        raise ValueError(f"need 1 <= k <= depth, got k={k}, depth={depth}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = list(dict.fromkeys(queries))
    rows: list[dict] = []
    failed = 0
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        results = backend.search([SearchRequest(q.query, q.question, list(q.golden_answers)) for q in chunk], depth)
        for q, res in zip(chunk, results):
            if not res.ok:
                failed += 1
                continue
            for kind, docs in label_examples(q, res.docs, k):
                msgs = sft_messages(q.query, q.question, list(q.golden_answers), kind, k)
                msgs.append({"role": "assistant", "content": sft_target(docs)})
                rows.append({"messages": msgs, "kind": kind, "k": k, "query": q.query, "question": q.question,
                             "golden_answers": list(q.golden_answers), "data_source": q.data_source,
                             "split": question_split(q.question, val_fraction)})
    if failed:
        logger.warning("%d of %d searches failed and gave no example", failed, len(unique))
    if not rows:
        raise ValueError(f"no example from {len(unique)} queries: the engine found no document with a gold answer "
                         "(wrong corpus for these questions?) and none without one")
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)
    return path


def summary(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        key = f"{r['split']}/{r['kind']}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
