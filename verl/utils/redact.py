"""Secrets out of what is written: a config or a command line with every secret-looking value replaced by '***'.

Used by the tracking backends (config, W&B run metadata) and by the run log's header line (the command line), so
that a key given as `+search.serpapi_key=...` or `--api_key ...` reaches no file.
"""

from __future__ import annotations

from typing import Any

SECRET_MARKERS = ("api_key", "apikey", "secret", "password", "serpapi_key", "ser_api_key")  # anywhere in a key


def redact(obj: Any) -> Any:
    """A deep copy of a config with every secret-looking value replaced by '***'."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if _secret_name(str(k)) and not isinstance(v, (dict, list)) and v not in (None, ""):
                out[k] = "***"
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def _secret_name(name: str) -> bool:
    """A secret-looking key: one of SECRET_MARKERS anywhere, or a last component `token` / `*_token` (hf_token,
    access_token; not max_tokens or ppo_max_token_len_per_gpu)."""
    lk = name.lower()
    last = lk.rsplit(".", 1)[-1].lstrip("-+~")
    return any(m in lk for m in SECRET_MARKERS) or last == "token" or last.endswith("_token")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the value of every secret-looking option replaced by '***': `key=value` overrides
    (`+search.serpapi_key=sk`, `--api_key=sk`) and a value after a secret-looking flag or KEY (`--token sk`)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        if hide_next:
            out.append("***")
            hide_next = False
        elif eq and _secret_name(name):
            out.append(f"{name}=***")
        else:
            out.append(arg)
            hide_next = not eq and _secret_name(arg)
    return out
