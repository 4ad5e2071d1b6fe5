"""The trainer's rollout factory: the `search` config section -> a multi-turn search rollout function.

`make_search_rollout_fn(config, tokenizer, **kwargs)` returns `rollout(batch, engine, params, step, validate)`.
It reads the `search` section (`config.search`, else `config.extra["search"]`; kwargs override single keys)
and splits it three ways:
- rollout keys (`GenerationConfig`: max_turns, observation_format, final_turn, ...); the length budgets come
  from `data.max_prompt_length / max_response_length / max_obs_length`;
- curriculum keys (schedule, start_threshold, end_threshold, base, total_steps; default total_steps:
  trainer.total_training_steps), used only by simulated modes (real engines ignore noise: noise_p = 0);
- everything else is the backend's (`zerosearch.search.SearchConfig`: mode, topk, corpus_path, ips, ...).
Validation uses a separate backend, `val_mode` (default: the training mode if it is a real engine, else
"local", the embedded world's BM25), with `val` holding backend keys that differ for validation. It is built
on first use, with noise_p = 0. `backend=` / `val_backend=` kwargs inject ready-made backends.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from verl.protocol import DataProto
from verl.workers.rollout.base import RolloutEngine, SamplingParams
from zerosearch.curriculum import CurriculumConfig, NoiseCurriculum
from zerosearch.generation import GenerationConfig, SearchRolloutManager
from zerosearch.search.base import SearchBackend

logger = logging.getLogger(__name__)

GENERATION_KEYS = ("max_turns", "observation_format", "observation_role", "stop", "final_stop",
                   "invalid_action_message", "on_eos_without_action", "final_turn", "truncate_prompt",
                   "overlap_chunks")
# GenerationConfig fields the search section does not set: lengths come from `data.*`, topk from the backend
GENERATION_FIELDS_FROM_ELSEWHERE = ("max_prompt_length", "max_response_length", "max_obs_length", "topk")
CURRICULUM_KEYS = ("schedule", "start_threshold", "end_threshold", "base", "total_steps")
SIMULATED_MODES = ("simulate_prompt", "simulate_sft")


def _as_dict(section: Any, name: str) -> dict[str, Any]:
    if section is None:
        return {}
    if type(section).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        section = OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, Mapping):
        raise ValueError(f"{name} must be a mapping, got {type(section).__name__}")
    return dict(section)


def config_section(config, name: str) -> dict[str, Any]:
    """`config.<name>` (PPOConfig's plugged-component sections), else `config.extra[name]`, else {}."""
    value = getattr(config, name, None)
    if value is None:
        value = _as_dict(getattr(config, "extra", None), "extra").get(name)
    return _as_dict(value, name)


def split_search_section(section: Mapping[str, Any]) -> tuple[dict, dict, dict, dict, str | None]:
    """(generation keys, curriculum keys, backend keys, validation backend overrides, val_mode)."""
    section = dict(section)
    val_mode = section.pop("val_mode", None)
    val_overrides = _as_dict(section.pop("val", None), "search.val")
    gen = {k: section.pop(k) for k in GENERATION_KEYS if k in section}
    curriculum = {k: section.pop(k) for k in CURRICULUM_KEYS if k in section}
    return gen, curriculum, section, val_overrides, val_mode


def _backend_configs(backend_keys: dict, val_overrides: dict, val_mode: str | None):
    """(training backend, validation backend) configs: validation uses `val_mode` (default: the training mode if it
    is a real engine, else "local") with the `val` overrides."""
    from zerosearch.search.config import SearchConfig

    train_search = SearchConfig.from_any(backend_keys)
    val_mode = val_mode or (train_search.mode if train_search.mode not in SIMULATED_MODES else "local")
    return train_search, SearchConfig.from_any({**backend_keys, **val_overrides, "mode": val_mode})


def val_search_config(config):
    """The `SearchConfig` of the validation backend the rollout builds for `config` (what evaluation searches)."""
    _, _, backend_keys, val_overrides, val_mode = split_search_section(config_section(config, "search"))
    return _backend_configs(backend_keys, val_overrides, val_mode)[1]


def make_search_rollout_fn(config, tokenizer, backend: SearchBackend | None = None,
                           val_backend: SearchBackend | None = None, **overrides: Any) -> Callable[..., DataProto]:
    from zerosearch.search import build_search_backend

    section = {**config_section(config, "search"), **overrides}
    gen_keys, curriculum_keys, backend_keys, val_overrides, val_mode = split_search_section(section)
    train_search, val_search = _backend_configs(backend_keys, val_overrides, val_mode)

    data = config.data
    gen_cfg = GenerationConfig.from_dict({
        "max_prompt_length": data.max_prompt_length,
        "max_response_length": data.max_response_length,
        "max_obs_length": data.max_obs_length,
        "topk": train_search.topk,
        **gen_keys,
    })
    val_gen_cfg = dataclasses.replace(gen_cfg, topk=val_search.topk)

    schedule = None
    if train_search.mode in SIMULATED_MODES:
        steps = max(1, int(config.trainer.total_training_steps))
        curriculum = {**config_section(config, "curriculum"), "total_steps": steps, **curriculum_keys}
        schedule = NoiseCurriculum(CurriculumConfig.from_dict(curriculum, section="search"))
        logger.info("search rollout: noise curriculum %r", schedule)
    logger.info("search rollout: train mode=%s, val mode=%s, max_turns=%d, format=%s",
                train_search.mode, val_search.mode, gen_cfg.max_turns, gen_cfg.observation_format)

    train = SearchRolloutManager(None, tokenizer, backend or build_search_backend(train_search), gen_cfg, schedule)
    managers: dict[bool, SearchRolloutManager] = {False: train}

    def rollout(batch: DataProto, engine: RolloutEngine, params: SamplingParams, step: int,
                validate: bool = False) -> DataProto:
        validate = bool(validate)
        if validate not in managers:
            managers[True] = SearchRolloutManager(None, tokenizer, val_backend or build_search_backend(val_search),
                                                  val_gen_cfg, None)
        manager = managers[validate]
        manager.engine = engine
        return manager.run(batch, params, step)

    def close() -> None:
        for manager in managers.values():
            manager.backend.close()

    rollout.close = close  # type: ignore[attr-defined]
    rollout.managers = managers  # type: ignore[attr-defined]
    return rollout
