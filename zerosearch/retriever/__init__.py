"""Local retrieval: passage corpus indexes (BM25, optional dense) and the FastAPI `/retrieve` server."""

from zerosearch.retriever.index import BM25Index, Passage, load_corpus, split_contents  # noqa: F401
