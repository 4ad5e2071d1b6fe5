"""The registry of search backends: `search.mode` names a class registered with `@register_backend`.

Adding a backend is one decorated class (and its test)::

    @register_backend("bing", keys=("timeout_s", "max_retries", "backoff_s"))
    class BingBackend(MeteredBackend):
        name = "bing"
        def __init__(self, cfg: SearchConfig) -> None: ...
        def search(self, requests, topk): ...
        def close(self): ...

`keys` are the `SearchConfig` fields the backend reads beyond the common ones (`COMMON_KEYS`); the rollout factory
refuses a search section that sets any other field to a non-default value (it would do nothing). `simulated=True`
marks an LLM simulator: it gets the noise curriculum, is never cached and is not a validation engine.
`cached=True`: wrapped in the persistent cache unless `search.use_cache=false`. A class may define
`check_config(cfg)` for its own cross-field rules (raise `ConfigError` naming `search.<key>`).

The valid modes, the simulated ones and the error for an unknown mode all come from here: nothing else lists them.
The backends register when `zerosearch.search` is imported: it imports every module of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from verl.utils.config_loader import ConfigError

COMMON_KEYS = ("mode", "topk", "max_doc_chars", "use_cache", "cache_path")


@dataclass(frozen=True)
class BackendSpec:
    mode: str
    cls: type
    simulated: bool
    cached: bool
    keys: tuple[str, ...]  # SearchConfig fields the backend reads, COMMON_KEYS included


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(*modes: str, keys: tuple[str, ...] = (), simulated: bool = False,
                     cached: bool = False) -> Callable[[type], type]:
    """Class decorator: `search.mode` in `modes` builds this class as `cls(cfg)` with the `SearchConfig`."""
    if not modes:
        raise ValueError("register_backend needs at least one mode name")

    def deco(cls: type) -> type:
        for mode in modes:
            old = _BACKENDS.get(mode)
            if old is not None and old.cls.__qualname__ != cls.__qualname__:
                raise ValueError(f"search mode {mode!r} is already registered by {old.cls.__qualname__}")
            _BACKENDS[mode] = BackendSpec(mode, cls, simulated, cached, tuple(dict.fromkeys(COMMON_KEYS + keys)))
        return cls

    return deco


def modes() -> tuple[str, ...]:
    """Every registered mode, in registration order."""
    return tuple(_BACKENDS)


def simulated_modes() -> tuple[str, ...]:
    return tuple(m for m, s in _BACKENDS.items() if s.simulated)


def real_modes() -> tuple[str, ...]:
    return tuple(m for m, s in _BACKENDS.items() if not s.simulated)


def is_simulated(mode: str) -> bool:
    return backend_spec(mode).simulated


def backend_spec(mode: str, key: str = "search.mode") -> BackendSpec:
    """The registration of `mode`; an unknown one raises naming `key` and the registered modes."""
    spec = _BACKENDS.get(mode)
    if spec is None:
        raise ConfigError(f"{key} must be one of {', '.join(_BACKENDS)}, got {mode!r}")
    return spec


def check_backend_config(spec: BackendSpec, cfg: Any) -> None:
    """The backend's own cross-field rules, when its class defines `check_config(cfg)`."""
    check = getattr(spec.cls, "check_config", None)
    if check is not None:
        check(cfg)
