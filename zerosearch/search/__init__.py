"""Search backends: simulated (an LLM writes the documents) and real (SerpAPI, HTTP retriever, local BM25).

`build_search_backend(cfg)` is the one entry point: `cfg` is a `SearchConfig` or the plain `search:` dict
of the trainer config, validated with errors that name `search.<key>`; `cfg.mode` names a class registered with
`@register_backend` (`zerosearch.search.registry`; adding a backend is one decorated class in a new module of this
package: importing the package imports every module in it, so nothing else is edited). Built-in modes:

  simulate_prompt  an instruct model on an OpenAI-compatible server, prompted with a one-shot example
  simulate_sft     a fine-tuned simulator on such a server, short prompt (format in `sim_prompts`)
  google           SerpAPI (key from env SER_API_KEY / SERPAPI_API_KEY)
  wiki             a Search-R1-style HTTP retriever (`POST /retrieve`), e.g. `zerosearch.retriever.server`
  local            in-process BM25 over a corpus JSONL (default: the embedded world's corpus)

Real engines are wrapped in a persistent sqlite cache when `use_cache` is on (default for google, wiki).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from zerosearch.search.base import NO_INFORMATION, Doc, SearchBackend, SearchRequest, SearchResult, format_docs
from zerosearch.search.config import SearchConfig
from zerosearch.search.registry import backend_spec, register_backend

# the built-in backends register their modes (in this order: the order of the modes in messages)
from zerosearch.search import simulate, google, wiki, local  # noqa: E402, F401, I001  isort: skip

__all__ = [
    "NO_INFORMATION",
    "Doc",
    "SearchBackend",
    "SearchConfig",
    "SearchRequest",
    "SearchResult",
    "build_search_backend",
    "format_docs",
    "register_backend",
]


def build_search_backend(cfg: SearchConfig | dict | None) -> SearchBackend:
    """Build the backend registered for `cfg.mode`, wrapped in the persistent cache when `cfg.cache_enabled`."""
    cfg = SearchConfig.from_any(cfg)
    backend = backend_spec(cfg.mode).cls(cfg)
    if not cfg.cache_enabled:
        return backend
    from zerosearch.search.cache import CachedBackend, SearchCache

    if cfg.cache_path:
        path = cfg.cache_path
    else:
        from verl.utils.models import cache_dir

        path = cache_dir() / "search_cache.sqlite"
    return CachedBackend(backend, SearchCache(path))


def _import_every_module() -> None:
    """Import each module of this package, so that a backend in a new file registers its modes (the built-ins,
    imported above, keep their order: the order of the modes in messages)."""
    for module in sorted(p.stem for p in Path(__file__).parent.glob("*.py")):
        if module != "__init__":
            importlib.import_module(f"{__name__}.{module}")


_import_every_module()
