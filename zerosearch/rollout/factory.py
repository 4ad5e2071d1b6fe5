"""The trainer's rollout factory: the `search` config section -> a multi-turn search rollout function.

`make_search_rollout_fn(config, tokenizer, **kwargs)` returns `rollout(batch, engine, params, step, validate)`.
It reads the `search` section (`config.search`; kwargs override single keys) and splits it three ways:
- rollout keys (`GenerationConfig`: max_turns, observation_format, final_turn, ...); the length budgets come
  from `data.max_prompt_length / max_response_length / max_obs_length`;
- curriculum keys (`CurriculumConfig`: schedule, start_threshold, end_threshold, base, total_steps; default
  total_steps: trainer.total_training_steps), used only by simulated modes (real engines ignore noise: noise_p = 0);
- everything else is the backend's (`zerosearch.search.SearchConfig`: mode, topk, corpus_path, ips, ...).
No key is accepted that does nothing: a backend key that neither the training nor the validation backend reads
(see `register_backend(keys=...)`), or a curriculum key under a real training engine, set to anything but its
default, is refused naming the key and the modes.
Validation uses a separate backend, `val_mode` (default: the training mode if it is a real engine, else
"local", the embedded world's BM25), with `val` holding backend keys that differ for validation. It is built
with the training one when the run validates (else on first use), with noise_p = 0. `backend=` / `val_backend=`
kwargs inject ready-made backends. `check_config(config)` checks all of this without building anything (the
trainer calls it before Ray starts).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from verl.protocol import DataProto
from verl.utils.config_loader import ConfigError, plain
from verl.workers.rollout.base import RolloutEngine, SamplingParams
from zerosearch.curriculum import CurriculumConfig, NoiseCurriculum
from zerosearch.rollout.base import ROLLOUT_MODES, SearchRollout
from zerosearch.rollout.config import GenerationConfig
from zerosearch.search.base import SearchBackend
from zerosearch.search.config import SearchConfig
from zerosearch.search.registry import COMMON_KEYS, backend_spec, simulated_modes

logger = logging.getLogger(__name__)

# GenerationConfig fields the search section does not set: lengths come from `data.*`, topk from the backend
GENERATION_FIELDS_FROM_ELSEWHERE = ("max_prompt_length", "max_response_length", "max_obs_length", "topk")
GENERATION_KEYS = tuple(f.name for f in dataclasses.fields(GenerationConfig)
                        if f.name not in GENERATION_FIELDS_FROM_ELSEWHERE)
CURRICULUM_KEYS = tuple(f.name for f in dataclasses.fields(CurriculumConfig))


def config_section(config, name: str) -> dict[str, Any]:
    """`config.<name>` (PPOConfig's plugged-component sections: `search`, `reward`) as a plain dict ({} if unset)."""
    return plain(getattr(config, name, None), name)


def split_search_section(section: Mapping[str, Any]) -> tuple[dict, dict, dict, dict, str | None]:
    """(generation keys, curriculum keys, backend keys, validation backend overrides, val_mode)."""
    section = dict(section)
    val_mode = section.pop("val_mode", None)
    val_overrides = plain(section.pop("val", None), "search.val")
    gen = {k: section.pop(k) for k in GENERATION_KEYS if k in section}
    curriculum = {k: section.pop(k) for k in CURRICULUM_KEYS if k in section}
    return gen, curriculum, section, val_overrides, val_mode


def _refuse_unused(keys: Mapping[str, Any], used: set[str], built: Any, defaults: Any, prefix: str, why: str) -> None:
    """A key of `keys` outside `used` whose value (as built) differs from its default does nothing: refuse it."""
    from verl.utils.tracking import _secret_name

    for key in sorted(set(keys) - used):
        if getattr(built, key) != getattr(defaults, key):
            shown = "***" if _secret_name(key) else repr(keys[key])  # a secret's value is never shown
            raise ConfigError(f"{prefix}{key}={shown} does nothing: {why}; remove it (its default is "
                              f"{getattr(defaults, key)!r})")


def _backend_configs(backend_keys: dict, val_overrides: dict, val_mode: str | None):
    """(training backend, validation backend) configs: validation uses `val_mode` (default: the training mode if it
    is a real engine, else "local") with the `val` overrides. Keys neither backend reads are refused."""
    train_search = SearchConfig.from_any(backend_keys)
    val_mode = val_mode or (train_search.mode if not train_search.simulated else "local")
    backend_spec(val_mode, "search.val_mode")  # a typo there is named as such, not as search.mode
    val_search = SearchConfig.from_any({**backend_keys, **val_overrides, "mode": val_mode})
    train_keys, val_keys = backend_spec(train_search.mode).keys, backend_spec(val_search.mode).keys
    reads = f"search.mode={train_search.mode} reads {_own_keys(train_keys)}"
    if val_mode != train_search.mode:
        reads += f", search.val_mode={val_mode} reads {_own_keys(val_keys)}"
    _refuse_unused(backend_keys, set(train_keys) | set(val_keys), train_search, SearchConfig(), "search.", reads)
    _refuse_unused(val_overrides, set(val_keys), val_search, SearchConfig(), "search.val.",
                   f"search.val_mode={val_mode} reads {_own_keys(val_keys)}")
    return train_search, val_search


def _own_keys(keys: tuple[str, ...]) -> str:
    """A backend's keys beyond the common ones, for error texts."""
    own = [k for k in keys if k not in COMMON_KEYS]
    return ", ".join(own) if own else "only the common keys"


def val_search_config(config):
    """The `SearchConfig` of the validation backend the rollout builds for `config` (what evaluation searches)."""
    _, _, backend_keys, val_overrides, val_mode = split_search_section(config_section(config, "search"))
    return _backend_configs(backend_keys, val_overrides, val_mode)[1]


def rollout_mode(name: str) -> type[SearchRollout]:
    """The class registered as rollout mode `name`. Every module of this package is imported first, so a new mode
    is one file here with a `@register_rollout_mode` class (nothing else to edit)."""
    package = Path(__file__).parent
    for module in sorted(p.stem for p in package.glob("*.py")):
        if module not in ("__init__", "factory"):
            importlib.import_module(f"{__package__}.{module}")
    if name not in ROLLOUT_MODES:
        raise ValueError(f"actor_rollout_ref.rollout.mode={name!r} is not a rollout mode; "
                         f"valid: {sorted(ROLLOUT_MODES)}")
    return ROLLOUT_MODES[name]


def _rollout_mode(config) -> str:
    """`actor_rollout_ref.rollout.mode` (sync when the config has no rollout section, e.g. a bare test config)."""
    arr = getattr(config, "actor_rollout_ref", None)
    return str(getattr(getattr(arr, "rollout", None), "mode", "sync"))


def _will_validate(config) -> bool:
    """Whether the trainer runs a validation pass (val files and trainer.test_freq > 0 or val_before_train)."""
    data, trainer = getattr(config, "data", None), getattr(config, "trainer", None)
    if data is None or trainer is None:
        return True
    return bool(data.val_files) and (int(trainer.test_freq) > 0 or bool(trainer.val_before_train))


@dataclasses.dataclass
class RolloutPlan:
    """Everything `make_search_rollout_fn` builds from the config, before any backend or engine starts."""

    train_search: SearchConfig
    val_search: SearchConfig
    gen_cfg: GenerationConfig
    val_gen_cfg: GenerationConfig
    schedule: NoiseCurriculum | None
    mode_cls: type[SearchRollout]


def plan_rollout(config, overrides: Mapping[str, Any] | None = None) -> RolloutPlan:
    """The `search` section (with `overrides`) as typed configs; every problem raises ConfigError naming the key."""
    section = {**config_section(config, "search"), **dict(overrides or {})}
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
    steps = max(1, int(config.trainer.total_training_steps))
    curriculum = CurriculumConfig.from_dict({"total_steps": steps, **curriculum_keys}, section="search")
    if train_search.simulated:
        schedule = NoiseCurriculum(curriculum)
    else:
        _refuse_unused(curriculum_keys, {"total_steps"}, curriculum, CurriculumConfig(), "search.",
                       f"search.mode={train_search.mode} is a real engine, it returns no noisy documents (the noise "
                       f"curriculum applies to {', '.join(simulated_modes())})")
    try:
        mode_cls = rollout_mode(_rollout_mode(config))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return RolloutPlan(train_search, val_search, gen_cfg, val_gen_cfg, schedule, mode_cls)


def _check_ready(search: SearchConfig, role: str) -> None:
    try:
        search.check_ready()
    except ConfigError as e:
        raise ConfigError(f"{role}: {e}") from None


def check_config(config, **overrides: Any) -> None:
    """The trainer's start-up check (before Ray and any model): the rollout config, the curriculum and both
    backends' settings, including what they need from outside (the SerpAPI key, the corpus file); the validation
    backend only when the run validates. Starts nothing."""
    plan = plan_rollout(config, overrides)
    _check_ready(plan.train_search, f"training search backend (search.mode={plan.train_search.mode})")
    if _will_validate(config):
        _check_ready(plan.val_search, f"validation search backend (search.val_mode={plan.val_search.mode})")


def make_search_rollout_fn(config, tokenizer, backend: SearchBackend | None = None,
                           val_backend: SearchBackend | None = None, **overrides: Any) -> Callable[..., DataProto]:
    """The rollout function; both backends are built here (a bad validation backend fails at start-up, not after
    training), the validation one only when the run validates (else on first use)."""
    from zerosearch.search import build_search_backend

    plan = plan_rollout(config, overrides)
    train_search, val_search, gen_cfg = plan.train_search, plan.val_search, plan.gen_cfg
    if plan.schedule is not None:
        logger.info("search rollout: noise curriculum %r", plan.schedule)
    logger.info("search rollout: train mode=%s, val mode=%s, max_turns=%d, format=%s",
                train_search.mode, val_search.mode, gen_cfg.max_turns, gen_cfg.observation_format)

    mode_cls = plan.mode_cls
    train = mode_cls(tokenizer, backend or build_search_backend(train_search), gen_cfg, plan.schedule)
    managers: dict[bool, SearchRollout] = {False: train}

    def build_val() -> SearchRollout:
        return mode_cls(tokenizer, val_backend or build_search_backend(val_search), plan.val_gen_cfg, None)

    if _will_validate(config):
        try:
            managers[True] = build_val()
        except BaseException:
            train.close()
            raise

    def rollout(batch: DataProto, engine: RolloutEngine, params: SamplingParams, step: int,
                validate: bool = False) -> DataProto:
        validate = bool(validate)
        if validate not in managers:
            managers[True] = build_val()
        return managers[validate](batch, engine, params, step)

    def close() -> None:
        for manager in managers.values():
            manager.close()

    rollout.close = close  # type: ignore[attr-defined]
    rollout.managers = managers  # type: ignore[attr-defined]
    return rollout
