"""Prompt datasets read from parquet, and a resumable batch iterator.

Rows follow the Search-R1/ZeroSearch schema (`prompt` as a chat list, `reward_model.ground_truth`,
`data_source`, `extra_info.index`). Each row is tokenised once with the chat template; the trainer
ships token ids (`prompt_ids`) and the raw fields to the rollout and reward functions. A row's optional `tools`
column (a JSON list of OpenAI-style function schemas) goes to the template's `tools=`, as tool-calling models
(Qwen2.5, Hermes) are prompted.

Training batches drop the last partial batch (a step needs a full batch); validation never drops
rows (the original scored Bamboogle on 72 of its 125 questions). The iterator's position is part of
the checkpoint so a resumed run sees the same data order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from verl.utils.config_loader import ConfigError
from verl.utils.plain import to_plain

logger = logging.getLogger(__name__)

PASSTHROUGH = ("question", "golden_answers", "data_source", "ability", "reward_model", "extra_info", "id")


def prompt_options(data) -> dict:
    """The `data` config keys that decide how a row becomes a prompt (for `PromptDataset` and `from_dataframe`), so
    training, validation, evaluation and inference tokenise a question the same way."""
    return dict(prompt_key=data.prompt_key, max_prompt_length=data.max_prompt_length, truncation=data.truncation,
                apply_chat_template=data.apply_chat_template, assistant_prefix=data.assistant_prefix)


def row_tools(value, key: str, row: int) -> list[dict] | None:
    """A row's `tools` cell (JSON string or list; null: none) as the list the chat template's `tools=` takes."""
    value = to_plain(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"{key}: row {row}: column 'tools' is not valid JSON ({e})") from e
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError(f"{key}: row {row}: column 'tools' must be a JSON list of tool schemas, got {value!r:.80}")
    return value


def read_parquet(path: str | Path, key: str) -> pd.DataFrame:
    """A parquet file as a DataFrame; one that cannot be read raises ConfigError naming `key` (the config key)."""
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any reader failure: not a readable parquet file
        raise ConfigError(f"{key}: {path} is not a readable parquet file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None


def truncate(ids: list[int], length: int, side: str) -> list[int]:
    """`ids` cut to `length` tokens (data.truncation): left keeps the end, right the start, middle both ends."""
    if len(ids) <= length:
        return ids
    if side == "left":
        return ids[-length:]
    if side == "right":
        return ids[:length]
    if side == "middle":
        head = length // 2
        return ids[:head] + ids[len(ids) - (length - head):]
    raise ValueError(f"data.truncation must be left, right or middle to cut a prompt, got {side!r}")


class PromptDataset:
    """All rows of one or more parquet files, tokenised."""

    def __init__(
        self,
        files: list[str],
        tokenizer,
        *,
        prompt_key: str = "prompt",
        max_prompt_length: int = 512,
        truncation: str = "error",
        apply_chat_template: bool = True,
        check: Callable | None = None,
        max_samples: int | None = None,
        key: str = "data.train_files",
        assistant_prefix: str = "",
    ):
        if not files:
            raise ValueError(f"{key} is empty: give at least one parquet file")
        frames = []
        for f in files:
            path = Path(f)
            if not path.exists():
                raise FileNotFoundError(
                    f"{key}: {f} does not exist. For the embedded world run "
                    "`python -m zerosearch.data.world --out data/embedded` (make quickstart does it)."
                )
            df = read_parquet(path, key)
            if prompt_key not in df.columns:
                raise ValueError(f"{f}: column '{prompt_key}' (data.prompt_key) missing; columns: {list(df.columns)}")
            if check is not None:
                check(df, str(path))
            frames.append(df)
        df = pd.concat(frames, ignore_index=True)
        if max_samples is not None:
            df = df.iloc[:max_samples]
        self._tokenize(df, tokenizer, prompt_key, max_prompt_length, truncation, apply_chat_template, key,
                       assistant_prefix)

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, tokenizer, *, prompt_key: str = "prompt", max_prompt_length: int = 512,
                       truncation: str = "error", apply_chat_template: bool = True, key: str = "rows",
                       assistant_prefix: str = "") -> PromptDataset:
        """Rows built in memory (one question asked on the command line), tokenised exactly as a file's rows."""
        ds = cls.__new__(cls)
        ds._tokenize(df.reset_index(drop=True), tokenizer, prompt_key, max_prompt_length, truncation,
                     apply_chat_template, key, assistant_prefix)
        return ds

    def _tokenize(self, df: pd.DataFrame, tokenizer, prompt_key: str, max_prompt_length: int, truncation: str,
                  apply_chat_template: bool, key: str, assistant_prefix: str) -> None:
        self.df = df
        self.rows: list[dict] = []
        too_long = 0
        for i in range(len(df)):
            rec = df.iloc[i]
            messages = to_plain(rec[prompt_key])
            if apply_chat_template:
                tools = row_tools(rec["tools"], key, i) if "tools" in df.columns else None
                extra = {"tools": tools} if tools is not None else {}
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
            else:
                text = messages if isinstance(messages, str) else "\n".join(m["content"] for m in messages)
                ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            ids = list(ids)
            if assistant_prefix:  # the response starts pre-written (e.g. an opened tag); part of the prompt
                ids += tokenizer(assistant_prefix, add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt_length:
                too_long += 1
                if truncation == "error":
                    raise ConfigError(
                        f"{key}: row {i} has a {len(ids)}-token prompt, longer than data.max_prompt_length="
                        f"{max_prompt_length} (data.truncation=error): raise data.max_prompt_length to at least "
                        f"{len(ids)}, shorten the prompt, or set data.truncation=left|right|middle to cut it (left "
                        "cuts the start, where the instructions are)"
                    )
                ids = truncate(ids, max_prompt_length, truncation)
            row = {"prompt_ids": ids, "raw_prompt": messages}
            for col in PASSTHROUGH:
                if col in df.columns:
                    row[col] = to_plain(rec[col])
            rm = row.get("reward_model") or {}
            gt = rm.get("ground_truth") if isinstance(rm, dict) else None
            if gt is None:
                gt = row.get("golden_answers")
            row["ground_truth"] = gt
            row.setdefault("data_source", "unknown")
            row["row_index"] = i
            self.rows.append(row)
        if too_long:
            logger.warning("%s: %d prompts truncated to %d tokens", key, too_long, max_prompt_length)

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, indices: list[int]) -> dict[str, np.ndarray]:
        """Per-sample fields of the given rows as object arrays (DataProto.non_tensor_batch)."""
        out: dict[str, np.ndarray] = {}
        keys = self.rows[0].keys() if self.rows else []
        for k in keys:
            arr = np.empty(len(indices), dtype=object)
            for j, i in enumerate(indices):
                arr[j] = self.rows[i].get(k)
            out[k] = arr
        return out


@dataclass
class BatchIterator:
    """Deterministic, resumable iteration over dataset indices in fixed-size batches."""

    size: int
    batch_size: int
    shuffle: bool = True
    seed: int = 1
    drop_last: bool = True
    epoch: int = 0
    cursor: int = 0  # batches already taken in this epoch

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.drop_last and self.size < self.batch_size:
            raise ValueError(
                f"the dataset has {self.size} rows, fewer than data.train_batch_size={self.batch_size}: "
                "lower data.train_batch_size or add data"
            )

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng(self.seed + epoch).permutation(self.size)

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def next(self) -> tuple[list[int], int]:
        """(indices of the next batch, epoch); rolls over to the next epoch when one ends."""
        if self.cursor >= self.batches_per_epoch():
            self.epoch += 1
            self.cursor = 0
        order = self._order(self.epoch)
        start = self.cursor * self.batch_size
        idx = order[start : start + self.batch_size].tolist()
        self.cursor += 1
        return idx, self.epoch

    def epoch_batches(self) -> Iterator[list[int]]:
        """One full pass (validation): every row, last batch partial."""
        order = self._order(0)
        for s in range(0, self.size, self.batch_size):
            yield order[s : s + self.batch_size].tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("size") not in (None, self.size):
            logger.warning("dataset size changed since the checkpoint (%s -> %s)", state.get("size"), self.size)
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
