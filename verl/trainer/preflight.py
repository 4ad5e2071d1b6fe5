"""The start-up check: everything about a run that can be checked before Ray starts or a model loads.

`check(cfg)` runs after `load_config` (types, ranges, batch divisibility) and covers what needs the machine:
- model paths (`actor_rollout_ref.model.path`, `critic.model.path` with a critic): a local directory with a
  `config.json`, `embedded`, or a hub id (with `HF_HUB_OFFLINE` set: one already in the local Hugging Face cache);
- data files (`data.train_files`, `data.val_files`): each exists, is a readable parquet file, has
  `data.prompt_key`, and its first rows pass the `dataset_check` component (all rows are checked, and tokenised, by
  `main_ppo.load_datasets`, also before Ray);
- the components (`rollout_fn`, `reward_fn`): the target imports, and the `check_config(cfg, **kwargs)` its module
  offers next to the factory (e.g. `zerosearch.rollout.factory.check_config`: search backends, curriculum, rollout
  keys) passes.
Every problem raises `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from verl.trainer.config import PPOConfig
from verl.utils.config_loader import ConfigError

HEAD_ROWS = 64  # rows of each data file the start-up check reads
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
DATA_HINT = "For the embedded world run `python -m zerosearch.data.world --out data/embedded` (make quickstart does it)"


def check(cfg: PPOConfig) -> None:
    """Raise ConfigError on the first problem of `cfg` found without Ray or a model."""
    check_model_path(cfg.actor_rollout_ref.model.path, "actor_rollout_ref.model.path")
    if cfg.use_critic:
        check_model_path(cfg.critic.model.path, "critic.model.path")
    dataset_check = component(cfg.dataset_check.target, "dataset_check.target")
    for key, files in (("data.train_files", cfg.data.train_files), ("data.val_files", cfg.data.val_files)):
        if key == "data.train_files" and not files:
            raise ConfigError("data.train_files is empty: give at least one parquet file")
        for path in files:
            check_data_file(path, key, cfg.data.prompt_key, dataset_check)
    for c, key in ((cfg.rollout_fn, "rollout_fn"), (cfg.reward_fn, "reward_fn")):
        if not c.target:
            continue
        factory = component(c.target, f"{key}.target")
        checker = getattr(sys.modules.get(factory.__module__), "check_config", None)
        if callable(checker):
            try:
                checker(cfg, **c.kwargs)
            except ConfigError:
                raise
            except ValueError as e:  # the components' own config classes name their keys
                raise ConfigError(str(e)) from None


def component(target: str, key: str) -> Callable | None:
    """The component `target` names (None when unset); an import problem raises ConfigError naming `key`."""
    if not target:
        return None
    from verl.trainer.ppo.components import load_component

    try:
        return load_component(target, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_path(path: str, key: str) -> None:
    """`path` is `embedded`, a local model directory (config.json), or a hub id (cached, when offline)."""
    from verl.utils.models import is_embedded

    if is_embedded(path):
        return
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ConfigError(f"{key}: {path} is not a model directory (no config.json in it): give a Hugging Face "
                              "model directory, a hub id or 'embedded'")
        return
    local = str(path).startswith(("/", ".", "~")) or os.sep + os.sep in str(path) or str(path).count("/") > 1
    if local or not HUB_ID.match(str(path)):
        raise ConfigError(f"{key}: {path} does not exist: give a Hugging Face model directory, a hub id "
                          "(org/name) or 'embedded'")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(str(path), "config.json"), str):
            raise ConfigError(f"{key}: {path} is neither a local directory nor in the Hugging Face cache, and "
                              "HF_HUB_OFFLINE is set: download it first (huggingface-cli download "
                              f"{path}) or give a local model directory")


def check_data_file(path: str, key: str, prompt_key: str, dataset_check: Callable | None) -> None:
    """`path` exists, reads as parquet, has `prompt_key`, and its first rows pass `dataset_check(df, path)` (every
    row is checked when the datasets are built, still before Ray: `main_ppo.load_datasets`)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key}: {path} does not exist. {DATA_HINT}")
    if not p.is_file():
        raise ConfigError(f"{key}: {path} is not a file: give parquet files")
    try:
        pf = pq.ParquetFile(p)
        head = next(pf.iter_batches(batch_size=HEAD_ROWS), None)
        df = (head.to_pandas() if head is not None else pf.schema_arrow.empty_table().to_pandas())
    except Exception as e:  # noqa: BLE001 - any reader failure: not a readable parquet file
        raise ConfigError(f"{key}: {path} is not a readable parquet file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None
    if prompt_key not in df.columns:
        raise ConfigError(f"{key}: {path} has no column '{prompt_key}' (data.prompt_key); columns: "
                          f"{list(df.columns)}")
    if dataset_check is not None:
        try:
            dataset_check(df, str(path))
        except ValueError as e:  # e.g. zerosearch.data.schema.SchemaError
            raise ConfigError(f"{key}: {e}") from None
