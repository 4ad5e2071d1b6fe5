"""Search backends: simulated (an LLM writes the documents) and real (SerpAPI, HTTP retriever, local BM25).

`build_search_backend(cfg)` is the one entry point: `cfg` is a `SearchConfig` or the plain `search:` dict
of the trainer config, validated with errors that name `search.<key>`. Modes:

  simulate_prompt  an instruct model on an OpenAI-compatible server, prompted with a one-shot example
  simulate_sft     a fine-tuned simulator on such a server, short prompt (format in `sim_prompts`)
  google           SerpAPI (key from env SER_API_KEY / SERPAPI_API_KEY)
  wiki             a Search-R1-style HTTP retriever (`POST /retrieve`), e.g. `zerosearch.retriever.server`
  local            in-process BM25 over a corpus JSONL (default: the embedded world's corpus)

Real engines are wrapped in a persistent sqlite cache when `use_cache` is on (default for google, wiki).
"""

from __future__ import annotations

from zerosearch.search.base import NO_INFORMATION, Doc, SearchBackend, SearchRequest, SearchResult, format_docs
from zerosearch.search.config import SearchConfig

__all__ = [
    "NO_INFORMATION",
    "Doc",
    "SearchBackend",
    "SearchConfig",
    "SearchRequest",
    "SearchResult",
    "build_search_backend",
    "format_docs",
]


def build_search_backend(cfg: SearchConfig | dict | None) -> SearchBackend:
    """Build the backend named by `cfg.mode` (see the module docstring)."""
    cfg = SearchConfig.from_any(cfg)
    if cfg.mode in ("simulate_prompt", "simulate_sft"):
        from zerosearch.search.simulate import SimulationBackend

        return SimulationBackend(cfg)
    if cfg.mode == "google":
        from zerosearch.search.google import GoogleBackend

        backend = GoogleBackend(cfg)
    elif cfg.mode == "wiki":
        from zerosearch.search.wiki import WikiBackend

        backend = WikiBackend(cfg)
    else:
        from zerosearch.search.local import LocalBM25Backend

        backend = LocalBM25Backend(cfg)
    if not cfg.cache_enabled:
        return backend
    from zerosearch.search.cache import CachedBackend, SearchCache

    if cfg.cache_path:
        path = cfg.cache_path
    else:
        from verl.utils.models import cache_dir

        path = cache_dir() / "search_cache.sqlite"
    return CachedBackend(backend, SearchCache(path))
