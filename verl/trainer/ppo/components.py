"""Pluggable components of the trainer: the rollout function and the reward function.

The config names them by import path (`rollout_fn.target=package.module:factory`); a factory takes
`(config, tokenizer, **kwargs)` and returns the function. This is how `zerosearch` plugs its
multi-turn search rollout and its QA reward into a core that knows nothing about search.

Contracts
- rollout: `fn(batch, engine, params, step, validate) -> DataProto`. `batch` has one row per
  sample (already repeated `rollout.n` times) with `prompt_ids` and the dataset's fields; the
  output adds tensors `prompts, responses, input_ids, attention_mask, position_ids, response_mask`
  and `response_text` (decoded response only); `meta_info["metrics"]` may carry extra metrics.
- reward: `fn(batch) -> (scores: list[float], per_sample: list[dict[str, float]])`; the trainer puts
  each score on the sample's last policy token.

The defaults here are a single-turn rollout and a rule reward on the last number of the response
(enough to exercise the core on an arithmetic task without any search).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from verl.protocol import DataProto
from verl.utils.rollout_batch import build_rollout_batch
from verl.workers.rollout.base import GenOutput, RolloutEngine, SamplingParams


def load_component(target: str, key: str) -> Callable:
    """Import `package.module:attr` with an error that names the config key."""
    if ":" not in target:
        raise ValueError(f"{key}={target!r} must look like 'package.module:function'")
    mod_name, attr = target.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"{key}={target!r}: cannot import {mod_name} ({e})") from e
    if not hasattr(mod, attr):
        raise ValueError(f"{key}={target!r}: {mod_name} has no attribute {attr}")
    return getattr(mod, attr)


class WorkerGroupEngine:
    """Driver-side RolloutEngine that spreads prompts over the rollout workers (data parallel)."""

    def __init__(self, worker_group):
        self.wg = worker_group

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenOutput]:
        if params.n != 1:
            raise ValueError("the driver repeats prompts itself: call the worker engine with n=1")
        if not prompts:
            return []
        return self.wg.dispatch_dp_list("generate", prompts, params)

    @property
    def asynchronous(self) -> bool:
        """Whether the workers' engines take single requests (actor_rollout_ref.rollout.mode=async)."""
        return self.wg.max_concurrency > 1

    def prepare_rollout(self) -> None:
        """Refresh stale engines on every rank before single requests (a collective)."""
        self.wg.execute_all("prepare_rollout")

    async def agenerate(self, prompt: list[int], params: SamplingParams, key: int = 0) -> GenOutput:
        """One request on rank `key % world_size` (the agent loop passes the row index: a fixed, even spread)."""
        if params.n != 1:
            raise ValueError("a single request takes n=1")
        return await self.wg.submit(key % self.wg.world_size, "generate_one", prompt, params)

    def update_weights(self, state_dict) -> None:  # weights move worker-side (sync_rollout_weights)
        raise NotImplementedError("weights are synced inside the workers")


def make_single_turn_rollout(config, tokenizer, **_) -> Callable:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def rollout(batch: DataProto, engine: RolloutEngine, params: SamplingParams, step: int, validate: bool):
        prompts = [list(p) for p in batch.non_tensor_batch["prompt_ids"]]
        outs = engine.generate(prompts, params)
        responses = [o.token_ids for o in outs]
        tensors = build_rollout_batch(prompts, responses, None, pad,
                                      max_prompt_length=config.data.max_prompt_length,
                                      max_response_length=config.data.max_response_length, truncate=True)
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        return DataProto.from_dict(tensors=tensors, non_tensors={"response_text": texts})

    return rollout


_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def make_last_number_reward(config, tokenizer, **_) -> Callable:
    """1.0 when the last number in the response equals the ground truth (arithmetic tasks)."""

    def reward(batch: DataProto):
        scores, per = [], []
        for text, gt in zip(batch.non_tensor_batch["response_text"], batch.non_tensor_batch["ground_truth"]):
            target = gt.get("target", gt) if isinstance(gt, dict) else gt
            targets = [str(t).strip() for t in (target if isinstance(target, (list, tuple)) else [target])]
            nums = _NUM.findall(text or "")
            ok = float(bool(nums) and nums[-1] in targets)
            scores.append(ok)
            per.append({"acc": ok})
        return scores, per

    return reward
