"""Config loading: the YAML mirrors the dataclasses, and bad values fail naming the key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from verl.trainer.config import ConfigError, PPOConfig, load_config

ROOT = Path(__file__).resolve().parents[3]


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _keys(v, prefix + k + ".")
        else:
            out.add(prefix + k)
    return out


def test_yaml_mirrors_dataclasses():
    y = yaml.safe_load((ROOT / "configs" / "ppo_trainer.yaml").read_text())
    y.pop("hydra")
    y.pop("defaults")
    assert _keys(y) == _keys(dataclasses.asdict(PPOConfig()))


def test_defaults_load_and_interpolate():
    cfg = load_config({"trainer": {"project_name": "p", "experiment_name": "e"}})
    assert cfg.trainer.default_local_dir == "checkpoints/p/e"
    assert cfg.actor_rollout_ref.actor.optim.total_training_steps == cfg.trainer.total_training_steps


@pytest.mark.parametrize(
    "data, actor, algorithm, expected",
    [
        ({"train_batch_size": 8}, {"ppo_mini_batch_size": 8}, {}, True),
        ({"train_batch_size": 8}, {"ppo_mini_batch_size": 4}, {}, False),  # two optimizer steps per batch
        ({"train_batch_size": 8}, {"ppo_mini_batch_size": 8, "ppo_epochs": 2}, {}, False),
        ({"train_batch_size": 8}, {"ppo_mini_batch_size": 8}, {"use_kl_in_reward": True}, False),  # needs them
    ],
)
def test_on_policy_update_decides_the_old_log_prob_pass(data, actor, algorithm, expected):
    cfg = load_config({"data": data, "actor_rollout_ref": {"actor": actor}, "algorithm": algorithm})
    assert cfg.on_policy_update is expected


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"data": {"train_batch_sise": 4}}, "data.train_batch_sise"),
        ({"data": {"train_batch_size": "four"}}, "data.train_batch_size"),
        ({"algorithm": {"adv_estimator": "nope"}}, "algorithm.adv_estimator"),
        ({"actor_rollout_ref": {"rollout": {"n": 1}}}, "rollout.n >= 2"),
        ({"data": {"train_batch_size": 6}, "actor_rollout_ref": {"actor": {"ppo_mini_batch_size": 4}}},
         "ppo_mini_batch_size"),
        ({"actor_rollout_ref": {"actor": {"ppo_micro_batch_size_per_gpu": 3}}}, "ppo_micro_batch_size_per_gpu"),
        ({"actor_rollout_ref": {"rollout": {"name": "sglang"}}}, "rollout.name"),
        ({"actor_rollout_ref": {"rollout": {"dtype": "int8"}}}, "rollout.dtype must be one of"),
        ({"trainer": {"logger": ["tensorboard"]}}, "trainer.logger"),
        ({"trainer": {"resume_mode": "resume_path"}}, "resume_from_path"),
        ({"bogus_section": {}}, "bogus_section"),
        ({"actor_rollout_ref": {"actor": {"fsdp_config": {"optimizer_offload": True}}}},
         "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true: FSDP2's CPU offload"),
        ({"critic": {"fsdp_config": {"param_offload": True}}, "trainer": {"device": "cpu"}},
         "critic.fsdp_config.param_offload moves GPU memory to the host"),
        ({"actor_rollout_ref": {"model": {"use_remove_padding": True}}}, "actor_rollout_ref.model.use_remove_padding"),
        ({"trainer": {"device": "cpu", "exclude_gpus": [1]}}, "trainer.exclude_gpus keeps GPUs out"),
        ({"trainer": {"nnodes": 0}}, "trainer.nnodes"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_config(override)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config({"trainer": {"totl_training_steps": 3}})
    assert "total_training_steps" in str(e.value)


def test_single_path_becomes_list_and_int_widens_to_float():
    cfg = load_config({"data": {"train_files": "a.parquet"}, "actor_rollout_ref": {"actor": {"optim": {"lr": 1}}}})
    assert cfg.data.train_files == ["a.parquet"]
    assert cfg.actor_rollout_ref.actor.optim.lr == 1.0


@pytest.mark.parametrize("batch, n, gpus, nnodes, set_to, expected", [
    (64, 5, 4, 1, None, 80),  # ZeroSearch's 64 prompts x 5 samples on 4 GPUs: 80 rows per GPU at once
    (8, 4, 1, 1, None, 64),  # at least 64
    (512, 5, 8, 2, None, 160),
    (64, 5, 4, 1, 16, 16),  # an explicit value stays
])
def test_max_num_seqs_sized_from_the_batch(batch, n, gpus, nnodes, set_to, expected):
    cfg = load_config({"data": {"train_batch_size": batch},
                       "actor_rollout_ref": {"actor": {"ppo_mini_batch_size": batch, "ppo_micro_batch_size_per_gpu": 1},
                                             "rollout": {"n": n, "max_num_seqs": set_to}},
                       "trainer": {"n_gpus_per_node": gpus, "nnodes": nnodes}})
    assert cfg.actor_rollout_ref.rollout.max_num_seqs == expected


@pytest.mark.parametrize("device, set_to, expected", [("cpu", None, True), ("cuda", None, False),
                                                      ("cuda", True, True)])
def test_cuda_graphs_by_default_on_cuda(device, set_to, expected):
    cfg = load_config({"trainer": {"device": device}, "actor_rollout_ref": {"rollout": {"enforce_eager": set_to}}})
    assert cfg.actor_rollout_ref.rollout.enforce_eager is expected
