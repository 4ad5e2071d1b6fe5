"""Each default is set once, in its dataclass; the YAML configs and the launchers' key tables never disagree with it.

Rule: `configs/ppo_trainer.yaml` mirrors the trainer's dataclasses value for value. `configs/zerosearch.yaml` is a
preset over it: in the trainer's sections it holds only what it changes (a restated default would be a second place
for it), and in the plugged sections (`search`, `reward`), which no other YAML holds, it lists keys so that Hydra
can override them without `+`, each with exactly the dataclass's default. The launchers' KEY tables (train scripts,
evaluation) default to the same values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from verl.trainer.config import PPOConfig, RolloutConfig, TrainerConfig, load_config
from zerosearch import eval_setup, launch
from zerosearch.curriculum import CurriculumConfig
from zerosearch.reward import RewardConfig
from zerosearch.rollout.config import GenerationConfig
from zerosearch.rollout.factory import GENERATION_KEYS, split_search_section, val_search_config
from zerosearch.search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[2]


def _yaml(name: str) -> dict:
    data = yaml.safe_load((ROOT / "configs" / name).read_text())
    data.pop("defaults", None)
    data.pop("hydra", None)
    return data


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _default(cls: type, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def search_defaults() -> dict:
    """Every key of the `search` section and its default (SearchConfig, GenerationConfig, CurriculumConfig)."""
    out = {f.name: _default(SearchConfig, f.name) for f in dataclasses.fields(SearchConfig)}
    out.update({k: _default(GenerationConfig, k) for k in GENERATION_KEYS})
    out.update({f.name: _default(CurriculumConfig, f.name) for f in dataclasses.fields(CurriculumConfig)})
    out["val_mode"] = None  # the training mode if it is a real engine, else local (rollout factory)
    return out


def test_base_yaml_values_equal_the_trainer_defaults():
    base, defaults = _leaves(_yaml("ppo_trainer.yaml")), _leaves(dataclasses.asdict(PPOConfig()))
    assert base.keys() == defaults.keys()
    assert {k: v for k, v in base.items() if v != defaults[k]} == {}


def test_preset_trainer_sections_hold_only_changes():
    preset = _yaml("zerosearch.yaml")
    defaults = _leaves(dataclasses.asdict(PPOConfig()))
    changed = _leaves({k: v for k, v in preset.items() if k not in ("search", "reward")})
    assert set(changed) <= set(defaults), set(changed) - set(defaults)
    assert {k: v for k, v in changed.items() if v == defaults[k]} == {}  # restated defaults


REWARD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RewardConfig)}


@pytest.mark.parametrize("section, defaults", [("search", search_defaults()), ("reward", REWARD_DEFAULTS)])
def test_preset_component_sections_equal_the_dataclass_defaults(section, defaults):
    keys = _yaml("zerosearch.yaml")[section]
    assert set(keys) <= set(defaults), set(keys) - set(defaults)
    assert {k: (v, defaults[k]) for k, v in keys.items() if v != defaults[k]} == {}


def test_the_preset_loads_through_its_components():
    merged = _yaml("ppo_trainer.yaml")
    for k, v in _yaml("zerosearch.yaml").items():
        merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = load_config(merged)
    gen, curriculum, _, _, _ = split_search_section(cfg.search)
    GenerationConfig.from_dict(gen)
    CurriculumConfig.from_dict(curriculum, section="search")
    RewardConfig.from_dict(cfg.reward)
    assert val_search_config(cfg).mode == "local"


def test_launcher_key_tables_default_to_the_dataclass_values():
    tables = {"launch": launch.KEYS, "eval": eval_setup.COMMON_KEYS}
    expected = {
        "SEARCH_MODE": SearchConfig.mode, "SIMULATION_LLM": SearchConfig.simulation_llm, "PORT": SearchConfig.port,
        "IP": ",".join(_default(SearchConfig, "ips")), "RETRIEVER_URL": SearchConfig.retriever_url,
        "TOPK": SearchConfig.topk, "MAX_TURNS": GenerationConfig.max_turns,
        "START_THRESHOLD": CurriculumConfig.start_threshold, "END_THRESHOLD": CurriculumConfig.end_threshold,
        "ROLLOUT": RolloutConfig.name, "LOG_LEVEL": TrainerConfig.log_level,
    }
    wrong = {}
    for where, table in tables.items():
        for key, value in expected.items():
            if key in table and type(value)(table[key][0]) != value:
                wrong[f"{where}:{key}"] = (table[key][0], value)
    assert wrong == {}
