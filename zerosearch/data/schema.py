"""The Search-R1 / ZeroSearch parquet schema: check every file before training on it, and write it.

Columns (one row per question):
    id              str
    question        str
    golden_answers  list[str] (non-empty)
    data_source     str, e.g. "nq" or "embedded_2hop"
    prompt          list of chat messages {"role": "system"|"user"|"assistant", "content": str}
    ability         str, e.g. "fact-reasoning"
    reward_model    {"style": "rule", "ground_truth": {"target": list[str] (non-empty)}}
    extra_info      {"split": str, "index": int unique over the file, ...}
    tools           optional: the tool schemas passed to the chat template's `tools=`, a JSON string of a list
                    (prompt style "tool_call"; see zerosearch/data/prompts.py)

`check_dataframe` / `check_parquet` raise `SchemaError` (a ValueError) naming the file, the column, what
was expected, what was found and at which row. The variants real files have are accepted: pyarrow hands
lists back as numpy arrays (golden_answers, target, prompt as an array of dicts), ints as numpy ints, and
an int field holding nulls as floats (integral floats are accepted as indices).
`write_parquet` writes rows with a fixed arrow schema (no pandas index metadata), so identical rows give
byte-identical files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ALL_COLUMNS = ("id", "question", "golden_answers", "data_source", "prompt", "ability", "reward_model", "extra_info")
# What the trainer needs; `id` and `ability` are checked when present.
REQUIRED_COLUMNS = ("question", "golden_answers", "data_source", "prompt", "reward_model", "extra_info")
OPTIONAL_COLUMNS = ("tools",)  # written when the rows have them
ROLES = ("system", "user", "assistant")


class SchemaError(ValueError):
    """A dataset file does not follow the Search-R1 / ZeroSearch parquet schema."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _found(value: Any) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _is_seq(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, (list, tuple))


def _str_list_problem(value: Any) -> str | None:
    if not _is_seq(value):
        return "not a list"
    if len(value) == 0:
        return "an empty list"
    bad = [x for x in value if not isinstance(x, str)]
    return f"a list holding non-str item {_found(bad[0])}" if bad else None


def _str_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "not a str"
    return "an empty str" if not value.strip() else None


def _prompt_problem(value: Any) -> str | None:
    if not _is_seq(value):
        return "not a list of messages"
    if len(value) == 0:
        return "an empty message list"
    for j, msg in enumerate(value):
        if not isinstance(msg, dict):
            return f"message {j} is not a dict"
        if msg.get("role") not in ROLES:
            return f"message {j} has role {_short(msg.get('role'))} (expected one of {ROLES})"
        if not isinstance(msg.get("content"), str):
            return f"message {j} has content {_found(msg.get('content'))} (expected str)"
    return None


def _reward_model_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not a dict"
    gt = value.get("ground_truth")
    if not isinstance(gt, dict):
        return f"ground_truth is {_found(gt)} (expected a dict with key 'target')"
    if gt.get("target") is None:  # parquet structs turn an absent key into a null field
        return "ground_truth has no key 'target' (or it is null)"
    problem = _str_list_problem(gt["target"])
    return f"ground_truth.target is {problem}" if problem else None


def _extra_info_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not a dict"
    if "index" not in value or value["index"] is None:
        return "missing key 'index'"
    idx = value["index"]
    if isinstance(idx, (float, np.floating)):
        # pyarrow turns an int field with nulls into floats: accept integral values, report NaN as missing.
        if np.isnan(idx):
            return "missing key 'index' (NaN)"
        if float(idx).is_integer():
            return None
    if isinstance(idx, (bool, np.bool_)) or not isinstance(idx, (int, np.integer)):
        return f"index is {_found(idx)} (expected int)"
    return None


def _tools_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{_found(value)} (expected a JSON string)"
    try:
        tools = json.loads(value)
    except ValueError as exc:
        return f"invalid JSON ({exc})"
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return "JSON that is not a list of objects"
    return None


CHECKS: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "id": ("a str", _str_problem),
    "question": ("a non-empty str", _str_problem),
    "golden_answers": ("a non-empty list of str", _str_list_problem),
    "data_source": ("a non-empty str", _str_problem),
    "prompt": ("a non-empty list of {'role', 'content'} messages", _prompt_problem),
    "ability": ("a str", _str_problem),
    "reward_model": ("a dict {'style': ..., 'ground_truth': {'target': list of str}}", _reward_model_problem),
    "extra_info": ("a dict with an int 'index'", _extra_info_problem),
    "tools": ("a JSON string of a list of tool schemas (or null)", _tools_problem),
}


def check_dataframe(df: pd.DataFrame, source: str, required: Sequence[str] = REQUIRED_COLUMNS) -> None:
    """Raise SchemaError unless `df` follows the schema; `source` names the file in messages."""
    unknown = [c for c in required if c not in CHECKS]
    if unknown:
        raise ValueError(f"required columns {unknown} are not schema columns; known: {list(CHECKS)}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}; expected columns {list(required)}, "
                          f"found {list(df.columns)}. Re-create the file with zerosearch.data.prepare")
    if len(df) == 0:
        raise SchemaError(f"{source}: no rows")
    for column, (expected, problem_of) in CHECKS.items():
        if column not in df.columns:
            continue
        bad = [(i, p, v) for i, v in enumerate(df[column].tolist()) if (p := problem_of(v)) is not None]
        if bad:
            i, problem, value = bad[0]
            raise SchemaError(f"{source}: column '{column}': expected {expected}; found {problem} at row {i} "
                              f"(value {_found(value)}); {len(bad)} of {len(df)} rows are bad")
    if "extra_info" in df.columns:
        counts = Counter(int(info["index"]) for info in df["extra_info"].tolist())
        dups = sorted(k for k, n in counts.items() if n > 1)
        if dups:
            raise SchemaError(f"{source}: column 'extra_info': expected 'index' unique over the file; found "
                              f"{len(dups)} repeated value(s), e.g. {dups[:5]}. Renumber extra_info.index 0..n-1")


def check_parquet(path: str | Path, required: Sequence[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read a parquet file, check it (SchemaError names the file) and return it as a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a readable parquet file"
        raise SchemaError(f"{path}: cannot be read as parquet ({type(exc).__name__}: {exc})") from exc
    check_dataframe(df, str(path), required)
    return df


# ---------------------------------------------------------------------------------------------- writing
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
FIXED_TYPES = {
    "id": pa.string(),
    "question": pa.string(),
    "golden_answers": pa.list_(pa.string()),
    "data_source": pa.string(),
    "prompt": pa.list_(MESSAGE_TYPE),
    "ability": pa.string(),
    "tools": pa.string(),
    "reward_model": pa.struct([("style", pa.string()),
                               ("ground_truth", pa.struct([("target", pa.list_(pa.string()))]))]),
}


def make_row(uid: str, question: str, answers: Iterable[str], data_source: str, prompt: list[dict[str, str]],
             split: str, index: int, ability: str = "fact-reasoning", **extra: Any) -> dict[str, Any]:
    """One row of the schema; `extra` goes into extra_info next to split and index."""
    answers = [str(a) for a in answers]
    return {"id": uid, "question": question, "golden_answers": answers, "data_source": data_source,
            "prompt": prompt, "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": {"target": list(answers)}},
            "extra_info": {"split": split, "index": int(index), **extra}}


def write_parquet(rows: list[dict[str, Any]], path: str | Path, name: str | None = None) -> Path:
    """Check schema rows, write them to `path` (parent dirs created) and return the path; `name` (default: the path)
    is the file the errors name, e.g. the final name of a temporary file."""
    path = Path(path)
    name = name or str(path)
    if not rows:
        raise ValueError(f"refusing to write {name}: no rows")
    check_dataframe(pd.DataFrame(rows), f"{name} (before writing)")
    columns = ALL_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in rows[0])
    arrays = {c: pa.array([r.get(c) for r in rows], type=FIXED_TYPES[c]) for c in FIXED_TYPES if c in columns}
    arrays["extra_info"] = pa.array([r["extra_info"] for r in rows])
    table = pa.table({c: arrays[c] for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
