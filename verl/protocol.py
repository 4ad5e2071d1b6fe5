"""DataProto: the batch container that flows between the driver and the workers.

A batch is three things that travel together:
- `batch`: tensors keyed by name, all with the same first dimension (one row per sample),
  e.g. `input_ids [batch, seq_len]`, `token_level_scores [batch, response_len]`;
- `non_tensor_batch`: per-sample Python objects as numpy arrays of the same length
  (dtype=object for lists of strings/dicts), e.g. `uid`, `data_source`, `golden_answers`;
- `meta_info`: batch-level settings and results (temperature, metrics, ...), not split by row.

Every row operation (index, chunk, split, concat, repeat, reorder, pad) acts on tensors and
non-tensors alike, so a sample never loses its uid or answer on the way. Departures from verl:
no TensorDict dependency (a plain dict of tensors), `data[int]` returns a one-row DataProto,
and pickling compacts sliced tensors so a chunk shipped by Ray carries only its own rows
(a torch view otherwise pickles its whole parent storage).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

Index = int | slice | torch.Tensor | np.ndarray | Sequence[int]


def _to_object_array(key: str, values: Any) -> np.ndarray:
    """Lists/tuples become 1-D object arrays (elements kept whole, even equal-length lists)."""
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            raise ValueError(f"non_tensor_batch[{key!r}] is a 0-d array; give one value per sample (a list or array)")
        return values
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"non_tensor_batch[{key!r}] must be a list or numpy array, got {type(values).__name__}")
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def _objects_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Element-wise equality of two (object) arrays, tolerant of elements that are arrays or lists."""
    if a.shape != b.shape:
        return False
    return all(_values_equal(x, y) for x, y in zip(a.reshape(-1), b.reshape(-1)))


def _values_equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return False
        return torch.equal(a, b.to(a.device))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _objects_equal(a, b)
    try:
        return bool(a == b)
    except (ValueError, TypeError, RuntimeError):  # ambiguous truth value of a container of arrays
        return False


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A tensor that owns exactly its own elements (views of a larger storage are copied)."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


@dataclass(eq=False)
class DataProto:
    batch: dict[str, torch.Tensor] = field(default_factory=dict)  # each [batch, ...]
    non_tensor_batch: dict[str, np.ndarray] = field(default_factory=dict)  # each [batch, ...], dtype=object
    meta_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_consistency()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(
        cls,
        tensors: dict[str, torch.Tensor] | None = None,
        non_tensors: dict[str, Any] | None = None,
        meta_info: dict[str, Any] | None = None,
    ) -> DataProto:
        """Build a DataProto; lists in `non_tensors` become object arrays. Lengths are validated."""
        batch = {}
        for key, t in (tensors or {}).items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"tensors[{key!r}] must be a torch.Tensor, got {type(t).__name__}; "
                                 "put per-sample Python objects in non_tensors")
            batch[key] = t
        non_tensor = {key: _to_object_array(key, v) for key, v in (non_tensors or {}).items()}
        return cls(batch=batch, non_tensor_batch=non_tensor, meta_info=dict(meta_info or {}))

    def check_consistency(self) -> None:
        """Every tensor and non-tensor must have the same first dimension; the error names the key."""
        first: tuple[str, int] | None = None
        for kind, items in (("batch", self.batch), ("non_tensor_batch", self.non_tensor_batch)):
            for key, value in items.items():
                if kind == "batch" and not isinstance(value, torch.Tensor):
                    raise ValueError(f"batch[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
                if kind == "non_tensor_batch" and not isinstance(value, np.ndarray):
                    raise ValueError(f"non_tensor_batch[{key!r}] must be a numpy array, got {type(value).__name__}; "
                                     "use DataProto.from_dict to convert lists")
                if value.ndim == 0:
                    raise ValueError(f"{kind}[{key!r}] is 0-dimensional; it needs one row per sample")
                n = value.shape[0]
                if first is None:
                    first = (f"{kind}[{key!r}]", n)
                elif n != first[1]:
                    raise ValueError(f"{kind}[{key!r}] has {n} rows but {first[0]} has {first[1]}; "
                                     "all entries of a DataProto need the same batch size")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        for t in self.batch.values():
            return t.shape[0]
        for a in self.non_tensor_batch.values():
            return a.shape[0]
        return 0

    def __repr__(self) -> str:
        tensors = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in self.batch.items()}
        return (f"DataProto(len={len(self)}, batch={tensors}, non_tensor_batch={list(self.non_tensor_batch)}, "
                f"meta_info={list(self.meta_info)})")

    def _take(self, idx: slice | torch.Tensor) -> DataProto:
        """Rows selected by a slice or a 1-D long tensor of positions."""
        if isinstance(idx, slice):
            batch = {k: v[idx] for k, v in self.batch.items()}
            non_tensor = {k: v[idx] for k, v in self.non_tensor_batch.items()}
        else:
            np_idx = idx.cpu().numpy()
            batch = {k: v.index_select(0, idx.to(v.device)) for k, v in self.batch.items()}
            non_tensor = {k: v[np_idx] for k, v in self.non_tensor_batch.items()}
        return DataProto(batch=batch, non_tensor_batch=non_tensor, meta_info=dict(self.meta_info))

    def _as_positions(self, index: Any, name: str = "index") -> torch.Tensor:
        """A 1-D long tensor of row positions from a list/array/tensor (bool masks allowed)."""
        idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
        if idx.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(idx.shape)}")
        if idx.dtype == torch.bool:
            if idx.numel() != len(self):
                raise ValueError(f"boolean {name} has {idx.numel()} entries for a DataProto of {len(self)} rows")
            return idx.nonzero().flatten()
        if idx.numel() == 0:
            return idx.to(torch.long)
        if idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"{name} must hold integer row positions, got dtype {idx.dtype}")
        idx = idx.to(torch.long)
        n = len(self)
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"{name} out of range for a DataProto of {n} rows")
        return torch.where(idx < 0, idx + n, idx)

    def __getitem__(self, item: Index) -> DataProto:
        """Rows by int (a one-row DataProto), slice, or index list/array/tensor (long positions or bool mask)."""
        if isinstance(item, (int, np.integer)):
            n = len(self)
            i = int(item) + n if item < 0 else int(item)
            if not 0 <= i < n:
                raise IndexError(f"row {item} out of range for a DataProto of {n} rows")
            return self._take(slice(i, i + 1))
        if isinstance(item, slice):
            return self._take(item)
        return self._take(self._as_positions(item))

    # ------------------------------------------------------------------ keys
    def select(self, batch_keys: Sequence[str] | None = None,
               non_tensor_keys: Sequence[str] | None = None) -> DataProto:
        """A DataProto with only the named keys (None = all keys of that kind). Tensors are shared, not copied."""
        def pick(d: dict, keys: Sequence[str] | None, kind: str) -> dict:
            if keys is None:
                return dict(d)
            missing = [k for k in keys if k not in d]
            if missing:
                raise KeyError(f"{kind} has no key(s) {missing}; available: {sorted(d)}")
            return {k: d[k] for k in keys}

        return DataProto(batch=pick(self.batch, batch_keys, "batch"),
                         non_tensor_batch=pick(self.non_tensor_batch, non_tensor_keys, "non_tensor_batch"),
                         meta_info=dict(self.meta_info))

    def pop(self, batch_keys: Sequence[str] | None = None, non_tensor_keys: Sequence[str] | None = None) -> DataProto:
        """Remove the named keys from self and return them as a DataProto (None = no key of that kind, as in verl)."""
        batch_keys, non_tensor_keys = list(batch_keys or []), list(non_tensor_keys or [])
        popped = self.select(batch_keys, non_tensor_keys)
        for k in batch_keys:
            del self.batch[k]
        for k in non_tensor_keys:
            del self.non_tensor_batch[k]
        return popped

    def union(self, other: DataProto) -> DataProto:
        """Merge `other`'s keys into self (in place, returns self). Shared keys must hold equal values."""
        if self.batch or self.non_tensor_batch:
            if (other.batch or other.non_tensor_batch) and len(other) != len(self):
                raise ValueError(f"union of DataProtos with different lengths: {len(self)} vs {len(other)}")
        for k, v in other.batch.items():
            if k in self.batch and not _values_equal(self.batch[k], v):
                raise ValueError(f"union conflict: batch[{k!r}] differs between the two DataProtos")
        for k, v in other.non_tensor_batch.items():
            if k in self.non_tensor_batch and not _objects_equal(self.non_tensor_batch[k], v):
                raise ValueError(f"union conflict: non_tensor_batch[{k!r}] differs between the two DataProtos")
        for k, v in other.meta_info.items():
            if k in self.meta_info and not _values_equal(self.meta_info[k], v):
                raise ValueError(f"union conflict: meta_info[{k!r}] differs ({self.meta_info[k]!r} vs {v!r})")
        self.batch.update(other.batch)
        self.non_tensor_batch.update(other.non_tensor_batch)
        self.meta_info.update(other.meta_info)
        self.check_consistency()
        return self

    # ------------------------------------------------------------------ row layout
    def chunk(self, chunks: int) -> list[DataProto]:
        """Split into `chunks` equal parts (for dispatch to workers); the length must be divisible."""
        if chunks <= 0:
            raise ValueError(f"chunk count must be positive, got {chunks}")
        n = len(self)
        if n % chunks:
            raise ValueError(f"cannot chunk a DataProto of {n} rows into {chunks} equal parts; "
                             f"pad first with data.pad_to_divisor({chunks}) and unpad the output")
        size = n // chunks
        return [self[i * size:(i + 1) * size] for i in range(chunks)]

    def split(self, split_size: int) -> list[DataProto]:
        """Consecutive parts of `split_size` rows (the last may be shorter), e.g. micro-batches."""
        if split_size <= 0:
            raise ValueError(f"split_size must be positive, got {split_size}")
        return [self[i:i + split_size] for i in range(0, len(self), split_size)]

    @staticmethod
    def concat(data: Sequence[DataProto]) -> DataProto:
        """Rows of all parts in order. Keys must match; meta_info is the first part's, plus keys only others have."""
        if not data:
            raise ValueError("DataProto.concat needs at least one DataProto")
        first = data[0]
        for i, d in enumerate(data[1:], start=1):
            if set(d.batch) != set(first.batch) or set(d.non_tensor_batch) != set(first.non_tensor_batch):
                raise ValueError(f"DataProto.concat: part {i} has keys {sorted(d.batch)} + {sorted(d.non_tensor_batch)}"
                                 f" but part 0 has {sorted(first.batch)} + {sorted(first.non_tensor_batch)}")
        batch = {k: torch.cat([d.batch[k] for d in data], dim=0) for k in first.batch}
        non_tensor = {k: np.concatenate([d.non_tensor_batch[k] for d in data], axis=0) for k in first.non_tensor_batch}
        meta: dict[str, Any] = {}
        for d in reversed(data):
            meta.update(d.meta_info)
        return DataProto(batch=batch, non_tensor_batch=non_tensor, meta_info=meta)

    def repeat(self, repeat_times: int, interleave: bool = True) -> DataProto:
        """Each row `repeat_times` times: interleaved (a a b b, GRPO groups) or tiled (a b a b)."""
        if repeat_times <= 0:
            raise ValueError(f"repeat_times must be positive, got {repeat_times}")
        if interleave:
            batch = {k: v.repeat_interleave(repeat_times, dim=0) for k, v in self.batch.items()}
            non_tensor = {k: np.repeat(v, repeat_times, axis=0) for k, v in self.non_tensor_batch.items()}
        else:
            batch = {k: v.repeat(repeat_times, *([1] * (v.ndim - 1))) for k, v in self.batch.items()}
            non_tensor = {k: np.concatenate([v] * repeat_times, axis=0) for k, v in self.non_tensor_batch.items()}
        return DataProto(batch=batch, non_tensor_batch=non_tensor, meta_info=dict(self.meta_info))

    def reorder(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> DataProto:
        """Permute rows in place (row i becomes old row indices[i]); returns self. Must be a permutation."""
        idx = self._as_positions(indices, "reorder indices")
        identity = torch.arange(len(self), device=idx.device)
        if idx.numel() != len(self) or not torch.equal(torch.sort(idx).values, identity):
            raise ValueError(f"reorder indices must be a permutation of range({len(self)}); use data[indices] "
                             "to select or duplicate rows")
        taken = self._take(idx)
        self.batch, self.non_tensor_batch = taken.batch, taken.non_tensor_batch
        return self

    def pad_to_divisor(self, divisor: int) -> tuple[DataProto, int]:
        """Append copies of the first rows (cycling if needed) so the length divides by `divisor`."""
        if divisor <= 0:
            raise ValueError(f"divisor must be positive, got {divisor}")
        n = len(self)
        pad_size = (-n) % divisor
        if pad_size == 0:
            return self[:], 0
        if n == 0:
            raise ValueError("cannot pad an empty DataProto: there is no row to repeat")
        padding = self._take(torch.arange(pad_size) % n)
        return DataProto.concat([self, padding]), pad_size

    def unpad(self, pad_size: int) -> DataProto:
        """Drop the last `pad_size` rows added by pad_to_divisor."""
        if not 0 <= pad_size <= len(self):
            raise ValueError(f"pad_size must be in [0, {len(self)}], got {pad_size}")
        return self[:len(self) - pad_size]

    # ------------------------------------------------------------------ device and persistence
    def to(self, device: str | torch.device) -> DataProto:
        """Move all tensors to `device` (in place, returns self)."""
        self.batch = {k: v.to(device) for k, v in self.batch.items()}
        return self

    def save(self, path: str) -> None:
        """Dump with torch.save (debugging aid: pickles objects, load only trusted files)."""
        torch.save(self.__getstate__(), path)

    @classmethod
    def load(cls, path: str) -> DataProto:
        state = torch.load(path, weights_only=False, map_location="cpu")
        return cls(**state)

    def __getstate__(self) -> dict[str, Any]:
        return {"batch": {k: _compact(v) for k, v in self.batch.items()},
                "non_tensor_batch": self.non_tensor_batch, "meta_info": self.meta_info}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.batch = state["batch"]
        self.non_tensor_batch = state["non_tensor_batch"]
        self.meta_info = state["meta_info"]
