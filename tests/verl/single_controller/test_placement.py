"""Placement on Ray's logical GPUs (a CPU node declaring 4 GPUs): bundle -> node -> rank -> LOCAL_RANK -> GPU.

The worker groups are built by the trainer's own `worker_groups` from a GRPO and a PPO config, with probe workers
that only report their environment (no CUDA code runs). PPO's critic shares the actor's bundles: rank i of both sees
the same GPU and the run reserves 4 GPUs, not 8. The launcher's dry run (`bash train_ppo.sh ... DRY_RUN true`) does
the same against this cluster through `trainer.ray_address`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from verl.single_controller.placement import PlacementProbe, check_fits, plan_pool, visible_gpus
from verl.trainer.config import load_config
from verl.trainer.main_ppo import worker_groups

ROOT = Path(__file__).resolve().parents[3]


def _cfg(adv: str, n_gpus: int = 4, nnodes: int = 1) -> object:
    return load_config({"trainer": {"device": "cuda", "n_gpus_per_node": n_gpus, "nnodes": nnodes},
                        "algorithm": {"adv_estimator": adv}})


def test_plan_pool_bundles() -> None:
    gpu = plan_pool(2, 4, "cuda", 4.0)
    assert gpu.world_size == 8 and gpu.bundle() == {"CPU": 1.0, "GPU": 1.0} and gpu.total("GPU") == 8
    assert "8 GPU in all" in gpu.describe(["actor", "critic"]) and "actor 8 x 0.5 GPU" in gpu.describe(["a", "actor"])
    cpu = plan_pool(1, 2, "cpu", 0.5)
    assert cpu.bundle() == {"CPU": 0.5} and cpu.total("GPU") == 0
    with pytest.raises(ValueError, match="trainer.nnodes"):
        plan_pool(0, 2, "cpu", 1.0)
    with pytest.raises(ValueError, match="resolve trainer.device=auto"):
        plan_pool(1, 2, "auto", 1.0)


def test_visible_gpus_keeps_the_servers_out() -> None:
    assert visible_gpus(None, 8, [6, 7]) == [0, 1, 2, 3, 4, 5]
    assert visible_gpus("2,3,4,5", 4, [4]) == [2, 3, 5]
    with pytest.raises(ValueError, match="does not have"):
        visible_gpus(None, 4, [4])
    with pytest.raises(ValueError, match="leaves no GPU"):
        visible_gpus("0", 1, [0])
    with pytest.raises(ValueError, match="numeric CUDA_VISIBLE_DEVICES"):
        visible_gpus("GPU-1a2b", 1, [0])


@pytest.fixture(scope="module")
def four_gpu_node():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 4})
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _where(wg) -> list[dict[str, str]]:
    return wg.execute_all("where")


def test_grpo_one_rank_per_gpu(four_gpu_node) -> None:
    pool, actor, critic = worker_groups(_cfg("grpo"), "cuda", PlacementProbe, PlacementProbe)
    try:
        assert critic is None
        w = _where(actor)
        assert [x["RANK"] for x in w] == ["0", "1", "2", "3"]
        assert [x["LOCAL_RANK"] for x in w] == ["0", "1", "2", "3"] and {x["LOCAL_WORLD_SIZE"] for x in w} == {"4"}
        assert len({x["node_id"] for x in w}) == 1 and w[0]["node_id"] == pool.node_ids[0]
        assert sorted(x["CUDA_VISIBLE_DEVICES"] for x in w) == ["0", "1", "2", "3"]  # one GPU each
        assert {x["MASTER_ADDR"] for x in w} == {w[0]["ip"]}
        assert ray.available_resources().get("GPU", 0.0) == 0.0  # the pool holds all 4
    finally:
        actor.shutdown()
        pool.remove()


def test_ppo_critic_shares_the_actors_gpus(four_gpu_node) -> None:
    pool, actor, critic = worker_groups(_cfg("gae"), "cuda", PlacementProbe, PlacementProbe)
    try:
        assert pool.plan.total("GPU") == 4
        a, c = _where(actor), _where(critic)
        assert [x["CUDA_VISIBLE_DEVICES"] for x in a] == [x["CUDA_VISIBLE_DEVICES"] for x in c]
        assert sorted(x["CUDA_VISIBLE_DEVICES"] for x in a) == ["0", "1", "2", "3"]
        assert [x["LOCAL_RANK"] for x in c] == ["0", "1", "2", "3"]
        assert a[0]["MASTER_PORT"] != c[0]["MASTER_PORT"]  # two process groups
        # a third group would need GPUs the cluster does not have
        with pytest.raises(ValueError, match="only 0 of the cluster's 4"):
            check_fits(plan_pool(1, 4, "cuda", 1.0), "extra", free_wait_s=0)
    finally:
        actor.shutdown()
        critic.shutdown()
        pool.remove()
    check_fits(pool.plan, "after", free_wait_s=10)  # all 4 free again


def test_more_nodes_than_the_cluster_has(four_gpu_node) -> None:
    with pytest.raises(ValueError, match="needs 8 GPU .* has 4: .*trainer.nnodes=2"):
        worker_groups(_cfg("grpo", n_gpus=4, nnodes=2), "cuda", PlacementProbe)


def test_train_ppo_dry_run_plans_4_gpus_not_8(four_gpu_node) -> None:
    """`bash train_ppo.sh NUM_GPUS_PER_NODE 4 ... DRY_RUN true` on this 4-GPU node: the actor and the critic on the
    same 4 GPUs (the plan would not fit if the critic asked for 4 more)."""
    r = subprocess.run(["bash", str(ROOT / "train_ppo.sh"), "NUM_GPUS_PER_NODE", "4", "DEVICE", "cuda",
                        "MODEL_PATH", "/models/Qwen2.5-3B", "DRY_RUN", "true",
                        f"trainer.ray_address={four_gpu_node.address}"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHON": sys.executable})  # the cluster's auth settings too
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "4 GPU in all" in out and "critic 4 x 0.5 GPU (colocated)" in out
    gpus = {}
    for line in out.splitlines():
        if " rank " in line and "CUDA_VISIBLE_DEVICES=" in line:
            group, rest = line.split(" rank ", 1)
            gpus[(group, rest.split(":")[0])] = line.split("CUDA_VISIBLE_DEVICES=")[1].split()[0]
    assert len(gpus) == 8
    assert all(gpus[("actor_rollout_ref", str(r))] == gpus[("critic", str(r))] for r in range(4))
    assert sorted(gpus[("actor_rollout_ref", str(r))] for r in range(4)) == ["0", "1", "2", "3"]
