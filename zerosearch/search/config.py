"""Typed configuration of the search backends (the `search` section of the trainer config).

`SearchConfig.from_any` turns a plain dict (Hydra's `search:` section, or the keys the train scripts map
from `SEARCH_MODE`, `SIMULATION_LLM`, `IPS`, `TOPK`, ...) into a validated dataclass with the shared loader
(`verl.utils.config_loader`): unknown keys and wrong types fail with a message naming `search.<key>` and the
valid keys; cross-field rules (a mode that needs a URL or a corpus) fail here too, before any rollout starts.
The valid modes are the registered backends (`zerosearch.search.registry`); each field's default is set here
only (the configs do not repeat them).

Secrets: the SerpAPI key is read from the environment (`SER_API_KEY`, the original's name, or
`SERPAPI_API_KEY`). A key put in the config is accepted but never shown in reprs or `to_dict()`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from verl.utils.config_loader import ConfigError, from_dict, plain
from zerosearch.search.registry import backend_spec, check_backend_config

logger = logging.getLogger(__name__)

SERPAPI_KEY_ENVS = ("SER_API_KEY", "SERPAPI_API_KEY")
DEFAULT_CORPUS = "data/embedded/corpus.jsonl"


@dataclass
class SearchConfig:
    mode: str = "simulate_prompt"  # a registered backend: simulate_prompt | simulate_sft | google | wiki | local
    topk: int = 3  # documents per search (the caller may pass another k per call); the shipped runs' value
    # --- simulation LLM (OpenAI-compatible chat-completions server: sglang or vLLM) ---
    simulation_llm: str = "embedded"  # the served model name (`--served-model-name`)
    ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])  # several: load-balanced; "a,b" accepted
    port: int = 6001
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 192  # completion budget of one simulator call (3 short documents)
    per_document_noise: bool = False  # draw useful/noisy per document instead of per call
    seed: int = 0  # RNG of the noise draws
    # --- reliability, shared by every remote engine ---
    timeout_s: float = 60.0  # per HTTP attempt: its whole answer, in wall-clock time (not per byte)
    deadline_s: float | None = None  # simulator: one call's attempts + backoffs in all; None: timeout_s x attempts
    max_retries: int = 3  # extra attempts after the first, on timeouts / connection errors / 5xx
    backoff_s: float = 0.5  # first retry delay; doubles on each retry
    concurrency: int = 16  # simultaneous calls in flight
    # --- google (SerpAPI) ---
    serpapi_key: str | None = field(default=None, repr=False)  # prefer env SER_API_KEY / SERPAPI_API_KEY
    serpapi_base_url: str | None = None  # override (or env SERPAPI_BASE_URL), e.g. a local test server
    serp_params: dict = field(default_factory=dict)  # extra SerpAPI parameters (gl, hl, location, ...)
    serp_answer_box: bool = False  # put the answer box / knowledge graph first when SerpAPI returns one
    # --- wiki (Search-R1-style HTTP retriever) ---
    retriever_url: str = "http://127.0.0.1:8000"
    retrieval_batch_size: int = 64  # queries per POST /retrieve
    # --- local (in-process BM25) ---
    corpus_path: str = DEFAULT_CORPUS
    index_dir: str | None = None  # where the BM25 index is cached; None: <cache>/bm25/<corpus hash>
    # --- cache of real engines ---
    use_cache: bool | None = None  # None: on for google and wiki, off otherwise
    cache_path: str | None = None  # sqlite file; None: <cache>/search_cache.sqlite
    max_doc_chars: int = 1000  # documents are cut to this many characters

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self, section: str = "search") -> None:
        """Field and cross-field rules; `section` prefixes the key names in the errors."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg if section == "search" else msg.replace("search.", f"{section}."))

        if isinstance(self.ips, str):
            self.ips = [self.ips]
        self.ips = [ip.strip() for item in self.ips for ip in str(item).split(",") if ip.strip()]
        spec = backend_spec(self.mode, f"{section}.mode")
        need(self.topk >= 1, f"search.topk must be >= 1, got {self.topk}")
        need(self.timeout_s > 0, f"search.timeout_s must be > 0, got {self.timeout_s}")
        need(self.deadline_s is None or self.deadline_s > 0,
             f"search.deadline_s must be > 0 seconds (or null: timeout_s x (1 + max_retries)), got {self.deadline_s}")
        need(self.max_retries >= 0, f"search.max_retries must be >= 0, got {self.max_retries}")
        need(self.backoff_s >= 0, f"search.backoff_s must be >= 0, got {self.backoff_s}")
        need(self.concurrency >= 1, f"search.concurrency must be >= 1, got {self.concurrency}")
        need(self.max_doc_chars >= 16, f"search.max_doc_chars must be >= 16, got {self.max_doc_chars}")
        need(self.retrieval_batch_size >= 1, "search.retrieval_batch_size must be >= 1")
        if spec.simulated:
            need(bool(self.ips), "search.ips is empty: give the simulation server address(es), e.g. 127.0.0.1")
            need(1 <= self.port <= 65535, f"search.port must be a TCP port (1..65535), got {self.port}")
            bad = [ip for ip in self.ips if not valid_host(ip)]
            need(not bad, f"search.ips: {bad[0]!r} is not an IP address, a host name or an http(s) URL"
                          " (the port goes in search.port)" if bad else "")
            need(bool(self.simulation_llm), "search.simulation_llm is empty: give the server's served model name")
            need(self.max_tokens >= 16, f"search.max_tokens must be >= 16, got {self.max_tokens}")
            need(self.temperature >= 0, f"search.temperature must be >= 0, got {self.temperature}")
            need(
                not self.use_cache,
                "search.use_cache=true with a simulated mode: simulated results are random draws "
                "(useful/noisy) and must not be cached; set search.use_cache=null or false",
            )
        for key in ("retriever_url", "serpapi_base_url"):
            url = getattr(self, key)
            if url and key in spec.keys:
                try:
                    urlparse(url).port  # noqa: B018 - raises on a port outside 0..65535
                except ValueError as e:
                    need(False, f"search.{key}={url!r}: {e}; give http(s)://HOST:PORT with a port in 1..65535")
        check_backend_config(spec, self)

    @property
    def simulated(self) -> bool:
        """The mode is an LLM simulator (noise curriculum, never cached), not a real engine."""
        return backend_spec(self.mode).simulated

    @property
    def cache_enabled(self) -> bool:
        if self.use_cache is None:
            return backend_spec(self.mode).cached
        return bool(self.use_cache)

    @property
    def simulation_urls(self) -> list[str]:
        return [ip if ip.startswith("http") else f"http://{ip}:{self.port}" for ip in self.ips]

    def resolve_serpapi_key(self) -> str:
        """The SerpAPI key: config value, else env SER_API_KEY, else SERPAPI_API_KEY."""
        key = self.serpapi_key or next((os.environ[e] for e in SERPAPI_KEY_ENVS if os.environ.get(e)), "")
        if not key:
            raise ConfigError(
                "search.mode=google needs a SerpAPI key: export SER_API_KEY=... (or SERPAPI_API_KEY=...)"
            )
        return key

    def resolve_corpus_path(self) -> Path:
        """The corpus JSONL: as given (relative to the working dir), else relative to the project root."""
        path = Path(self.corpus_path).expanduser()
        if not path.is_absolute() and not path.exists():
            root_relative = Path(__file__).resolve().parents[2] / path
            if root_relative.exists():
                return root_relative
        if not path.exists():
            hint = (" (the embedded world's corpus: build it with the embedded data prep first)"
                    if self.corpus_path == DEFAULT_CORPUS else "")
            raise ConfigError(f"search.corpus_path {self.corpus_path!r} does not exist{hint}")
        return path

    def check_ready(self) -> None:
        """What building the backend needs from outside the config, checked without building it: the SerpAPI key
        (google) and the corpus file (local). Raises ConfigError naming the key and the fix."""
        if self.mode == "google":
            self.resolve_serpapi_key()
        elif self.mode == "local":
            self.resolve_corpus_path()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for logging; the SerpAPI key is masked."""
        d = dataclasses.asdict(self)
        if d.get("serpapi_key"):
            d["serpapi_key"] = "***"
        return d

    @classmethod
    def from_any(cls, cfg: SearchConfig | Mapping[str, Any] | None) -> SearchConfig:
        """A `SearchConfig` as is, else one built from a mapping (dict / OmegaConf) by the shared loader."""
        if isinstance(cfg, cls):
            return cfg
        if cfg is not None and not isinstance(cfg, Mapping) and type(cfg).__name__ != "DictConfig":
            raise ConfigError(f"search config must be a mapping or SearchConfig, got {type(cfg).__name__}")
        data = plain(cfg, "search")
        if isinstance(data.get("ips"), str):
            data["ips"] = data["ips"].split(",")
        if data.get("serpapi_key"):
            logger.warning("search.serpapi_key is set in the config; prefer env SER_API_KEY (configs end up in logs)")
        return from_dict(cls, data, prefix="search.")


HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")


def valid_host(value: str) -> bool:
    """An IPv4/IPv6 address, a host name, or an http(s) URL with a host (a simulation server address)."""
    if value.startswith(("http://", "https://")):
        return bool(urlparse(value).hostname)
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        pass
    if all(c.isdigit() or c == "." for c in value):  # dotted digits that are no IPv4 address: 999.1.1.1
        return False
    return len(value) <= 253 and bool(HOST_NAME.match(value))


def mask_secret(text: str, secret: str | None) -> str:
    """Replace every occurrence of `secret` in `text` (error messages carry request URLs) with ***."""
    if secret:
        text = text.replace(secret, "***")
    return text
