"""Plain-Python copies of values read from parquet / object arrays (numpy arrays and scalars -> lists, numbers).

One helper for the dataset loader, the trainer's trajectory logs and the search rollout's records; and
`iter_jsonl`, the one JSONL reader (corpora, trajectory logs, simulator rows) with line-numbered errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def to_plain(value: Any) -> Any:
    """JSON-friendly copy: numpy arrays/scalars, tuples and nested containers become lists, dicts and numbers."""
    if isinstance(value, np.ndarray):
        return [to_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; a bad line raises ValueError naming path:line."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc
