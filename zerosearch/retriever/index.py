"""Retrieval indexes over a passage corpus: BM25 (bm25s) and, as an optional extra, dense e5 + faiss.

Corpus format (Search-R1's): JSONL, one passage per line, `{"id": ..., "contents": "\\"Title\\"\\ntext"}`;
lines with separate `title` / `text` fields are accepted too. The BM25 index is built once and cached on
disk under `<cache>/bm25/<sha256 of the corpus>[:16]` (or `index_dir`), so a changed corpus gets a new
index and an unchanged one loads in a fraction of the build time. Building is serialised with a file
lock, so parallel processes (server + trainer) do not build twice.

Dense retrieval imports faiss and sentence-transformers lazily: `pip install zerosearch[dense]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from verl.utils.plain import iter_jsonl

logger = logging.getLogger(__name__)

INDEX_FORMAT = "bm25s-v1"  # bump when tokenisation or parameters change: old caches are ignored


@dataclass
class Passage:
    id: str
    contents: str

    @property
    def title_text(self) -> tuple[str, str]:
        return split_contents(self.contents)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "contents": self.contents}


def split_contents(contents: str) -> tuple[str, str]:
    """`"Title"\\ntext` -> (Title, text); no newline -> ("", contents)."""
    head, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents.strip()
    return head.strip().strip('"').strip(), rest.strip()


def load_corpus(path: str | Path) -> list[Passage]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    out: list[Passage] = []
    for lineno, row in iter_jsonl(path):
        if "contents" in row:
            contents = str(row["contents"])
        elif "text" in row:
            contents = f'"{row.get("title", "")}"\n{row["text"]}'
        else:
            raise ValueError(f"{path}:{lineno}: a passage needs a 'contents' field (or 'title' + 'text')")
        out.append(Passage(id=str(row.get("id", lineno - 1)), contents=contents))
    if not out:
        raise ValueError(f"corpus {path} has no passages")
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def _index_meta(passages: list[Passage]) -> dict:
    return {"format": INDEX_FORMAT, "n_passages": len(passages)}


class BM25Index:
    """BM25 over a corpus; `search(queries, k)` -> per query a list of (Passage, score), best first."""

    def __init__(self, passages: list[Passage], retriever) -> None:
        self.passages = passages
        self.retriever = retriever

    @classmethod
    def build(cls, passages: list[Passage]):
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(_tokenize([p.contents for p in passages]), show_progress=False)
        return cls(passages, retriever)

    @classmethod
    def from_corpus(cls, corpus_path: str | Path, index_dir: str | Path | None = None) -> BM25Index:
        """Load the cached index of this corpus, building (and caching) it the first time."""
        import bm25s

        passages = load_corpus(corpus_path)
        if index_dir is None:
            from verl.utils.models import cache_dir

            index_dir = cache_dir() / "bm25" / f"{file_sha256(corpus_path)[:16]}"
        index_dir = Path(index_dir)
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(index_dir) + ".lock"):
            stamp = index_dir / "zerosearch_index.json"
            if stamp.exists() and json.loads(stamp.read_text()) == _index_meta(passages):
                logger.info("loading BM25 index of %s from %s", corpus_path, index_dir)
                return cls(passages, bm25s.BM25.load(str(index_dir), show_progress=False))
            logger.info("building BM25 index over %d passages of %s", len(passages), corpus_path)
            index = cls.build(passages)
            tmp = Path(tempfile.mkdtemp(dir=index_dir.parent, prefix=index_dir.name + ".tmp"))
            index.retriever.save(str(tmp), show_progress=False)
            (tmp / "zerosearch_index.json").write_text(json.dumps(_index_meta(passages)))
            shutil.rmtree(index_dir, ignore_errors=True)
            tmp.rename(index_dir)
            return index

    def search(self, queries: list[str], k: int) -> list[list[tuple[Passage, float]]]:
        k = min(k, len(self.passages))
        if not queries or k < 1:
            return [[] for _ in queries]
        tokens = _tokenize(queries)
        # bm25s cannot score a query with no known token: give it a token that matches nothing.
        tokens = [t if t else ["\x00"] for t in tokens]
        ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_ids, row_scores in zip(np.asarray(ids), np.asarray(scores)):
            out.append([(self.passages[int(i)], float(s)) for i, s in zip(row_ids, row_scores) if s > 0])
        return out


class DenseIndex:
    """e5-style dense retrieval (inner product over normalised embeddings) with faiss. Optional extra."""

    def __init__(self, passages: list[Passage], model_path: str, batch_size: int = 64) -> None:
        try:
            import faiss
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "dense retrieval needs faiss-cpu and sentence-transformers: pip install 'zerosearch[dense]' "
                f"(missing: {exc.name}); or use --retriever bm25"
            ) from exc
        self.passages = passages
        self.encoder = SentenceTransformer(model_path, device="cpu")
        emb = self.encoder.encode(
            ["passage: " + p.contents for p in passages], batch_size=batch_size, normalize_embeddings=True
        ).astype("float32")
        self.index = faiss.IndexFlatIP(emb.shape[1])
        self.index.add(emb)

    def search(self, queries: list[str], k: int) -> list[list[tuple[Passage, float]]]:
        k = min(k, len(self.passages))
        if not queries or k < 1:
            return [[] for _ in queries]
        q = self.encoder.encode(["query: " + s for s in queries], normalize_embeddings=True).astype("float32")
        scores, ids = self.index.search(q, k)
        return [[(self.passages[int(i)], float(s)) for i, s in zip(r_ids, r_s) if i >= 0]
                for r_ids, r_s in zip(ids, scores)]
