"""One validation pass over rows of a prompt dataset: generate, score, aggregate.

The trainer's `validate()` and the standalone evaluation (`zerosearch.eval`) both call these functions, so the same
rows give the same numbers whether they are scored during training (the engine inside the workers) or from a
checkpoint (an engine in the evaluating process): the rollout and reward functions are the plugged components of
`verl.trainer.ppo.components`, called through their contracts.

- `make_batch(ds, idx)`: the rows as a DataProto with a fresh GRPO group id per prompt instance;
- `val_sampling_params(cfg)`: `actor_rollout_ref.rollout.val_kwargs` as engine sampling params (greedy unless
  `do_sample`), capped at `data.max_response_length`;
- `generate(...)`: repeat each row `n` times, run the rollout function, keep the input's fields on the output;
- `score(batch, reward_fn)`: the reward function's scores on each row's last policy token (`token_level_scores`)
  and in `non_tensor_batch["score"]`; returns the per-sample metric dicts;
- `aggregate_by_source` (in `metrics`) turns per-sample dicts into `val/<source>/<metric>`, the row mean
  `val/overall/<metric>` and the mean over data sources `val/dataset_avg/<metric>` (the paper's "Avg").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import torch

from verl.protocol import DataProto
from verl.workers.rollout.base import RolloutEngine, SamplingParams


def make_batch(ds, idx: list[int]) -> DataProto:
    """Rows `idx` of a `PromptDataset` as a batch of per-sample fields."""
    nt = ds.collate(idx)
    # GRPO groups: a fresh string uid per prompt instance, never a dataset index (the original's integer indices
    # collided across datasets).
    nt["uid"] = np.array([str(uuid.uuid4()) for _ in idx], dtype=object)
    return DataProto.from_dict(non_tensors=nt)


def val_sampling_params(cfg, seed: int | None = None) -> SamplingParams:
    """Sampling params of validation (one sample per call; `generate` repeats the rows `val_kwargs.n` times)."""
    v = cfg.actor_rollout_ref.rollout.val_kwargs
    temperature = v.temperature if v.do_sample else 0.0
    return SamplingParams(n=1, temperature=temperature, top_p=v.top_p, top_k=v.top_k,
                          max_tokens=cfg.data.max_response_length,
                          seed=cfg.trainer.seed if seed is None else seed)


def generate(batch: DataProto, rollout_fn: Callable, engine: RolloutEngine, params: SamplingParams, n: int,
             step: int, validate: bool) -> tuple[DataProto, dict]:
    """Rows repeated `n` times (interleaved: row 0's samples first), played by the rollout function. Returns the
    output batch (the input's per-sample fields kept) and the rollout's extra metrics."""
    batch = batch.repeat(n, interleave=True)
    out = rollout_fn(batch, engine, params, step, validate)
    metrics = out.meta_info.pop("metrics", {}) or {}
    for k, v in batch.non_tensor_batch.items():
        if k not in out.non_tensor_batch:
            out.non_tensor_batch[k] = v
    out.meta_info.update(batch.meta_info)
    return out, metrics


def score(batch: DataProto, reward_fn: Callable) -> list[dict]:
    """Score every row; the score sits on the row's last policy token. Returns the per-sample metric dicts."""
    scores, per_sample = reward_fn(batch)
    resp_mask = batch.batch["response_mask"]  # [B, R]
    token_scores = torch.zeros_like(resp_mask, dtype=torch.float32)
    has_tokens = resp_mask.sum(-1) > 0
    last = (resp_mask * torch.arange(resp_mask.shape[1])).argmax(-1)  # [B] index of the last policy token
    rows = torch.arange(len(scores))
    token_scores[rows[has_tokens], last[has_tokens]] = torch.tensor(scores, dtype=torch.float32)[has_tokens]
    batch.batch["token_level_scores"] = token_scores
    batch.non_tensor_batch["score"] = np.array(scores, dtype=object)
    return per_sample
