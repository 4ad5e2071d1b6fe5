"""Plain-Python copies of values read from parquet / object arrays (numpy arrays and scalars -> lists, numbers).

One helper for the dataset loader, the trainer's trajectory logs and the search rollout's records.
"""

from __future__ import annotations

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
