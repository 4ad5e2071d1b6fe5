"""Two Ray nodes on one machine (`ray.cluster_utils.Cluster`: two raylets with their own resources).

- 1-step GRPO with one FSDP2 worker per node over gloo (trainer.nnodes=2, trainer.n_gpus_per_node=1): the ranks land
  on different nodes and rendezvous at rank 0's node IP; the HF rollout engine, fp32, short lengths.
- Logical GPUs (2 per node): PPO's ranks are packed node by node, LOCAL_RANK restarts on each node, the critic sees
  its actor rank's GPU, and a node too small for trainer.n_gpus_per_node is refused with the keys to change.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import ray

from verl.single_controller.placement import PlacementProbe
from verl.trainer.config import load_config
from verl.trainer.main_ppo import build_trainer, worker_groups

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 2})
    cluster.add_node(num_cpus=1, num_gpus=2)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _arith(path: Path, n: int) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}? Reply with the number only."}],
                     "data_source": "arith", "golden_answers": [str(a + b)],
                     "reward_model": {"ground_truth": {"target": [str(a + b)]}}, "extra_info": {"index": i}})
    pd.DataFrame(rows).to_parquet(path)


def test_logical_gpus_packed_node_by_node(two_nodes) -> None:
    cfg = load_config({"trainer": {"device": "cuda", "nnodes": 2, "n_gpus_per_node": 2, "cpus_per_worker": 0.5},
                       "algorithm": {"adv_estimator": "gae"}})
    pool, actor, critic = worker_groups(cfg, "cuda", PlacementProbe, PlacementProbe)
    try:
        a, c = actor.execute_all("where"), critic.execute_all("where")
        nodes = [x["node_id"] for x in a]
        assert nodes[0] == nodes[1] != nodes[2] == nodes[3] and nodes == pool.node_ids
        assert [x["LOCAL_RANK"] for x in a] == ["0", "1", "0", "1"] and {x["LOCAL_WORLD_SIZE"] for x in a} == {"2"}
        assert sorted(x["CUDA_VISIBLE_DEVICES"] for x in a[:2]) == ["0", "1"] == sorted(x["CUDA_VISIBLE_DEVICES"]
                                                                                   for x in a[2:])
        assert [(x["node_id"], x["CUDA_VISIBLE_DEVICES"]) for x in c] == [(x["node_id"], x["CUDA_VISIBLE_DEVICES"])
                                                                         for x in a]
        assert {x["MASTER_ADDR"] for x in a} == {a[0]["ip"]}
    finally:
        actor.shutdown()
        critic.shutdown()
        pool.remove()
    big = load_config({"trainer": {"device": "cuda", "nnodes": 1, "n_gpus_per_node": 4, "cpus_per_worker": 0.5}})
    with pytest.raises(ValueError, match="needs 1 node.* with 4 GPU.*trainer.n_gpus_per_node=4"):
        worker_groups(big, "cuda", PlacementProbe)


def test_grpo_step_one_worker_per_node(two_nodes, tmp_path) -> None:
    _arith(tmp_path / "train.parquet", 8)
    _arith(tmp_path / "test.parquet", 2)
    cfg = load_config({
        "data": {"train_files": [str(tmp_path / "train.parquet")], "val_files": [str(tmp_path / "test.parquet")],
                 "max_prompt_length": 64, "max_response_length": 8, "train_batch_size": 2},
        "actor_rollout_ref": {
            "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, "optim": {"lr": 1e-5},
                      "fsdp_config": {"param_dtype": "fp32"}},
            "rollout": {"name": "hf", "n": 2, "max_num_seqs": 8},
        },
        "algorithm": {"adv_estimator": "grpo"},
        "trainer": {"device": "cpu", "nnodes": 2, "n_gpus_per_node": 1, "cpus_per_worker": 1.0,
                    "threads_per_worker": 1, "total_training_steps": 1, "logger": ["jsonl"],
                    "default_local_dir": str(tmp_path / "out"), "test_freq": -1, "save_freq": -1,
                    "resume_mode": "disable", "memory_plan": "off"},
    })
    trainer = build_trainer(cfg, "cpu")
    try:
        wg = trainer.actor_wg
        assert len(set(wg.node_ids)) == 2 and wg.local_ranks == [0, 0]
        assert wg.master_addr == wg.node_ips[0]
        summary = trainer.fit()
    finally:
        if trainer.tracker is not None:
            trainer.tracker.finish()
        trainer.actor_wg.shutdown()
        trainer.actor_wg.pool.remove()
    assert summary["global_step"] == 1
    rows = [json.loads(x) for x in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    for k in ("actor/pg_loss", "actor/grad_norm", "timing_s/gen"):
        assert math.isfinite(rows[0][k]), k
