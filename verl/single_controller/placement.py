"""Where the ranks of the worker groups run: one Ray placement group per node, ranks packed node by node.

A `ResourcePool` reserves `nnodes` placement groups of `per_node` bundles each (`STRICT_PACK`: all bundles of one
group on one node). A bundle is what one rank of every colocated worker group shares: one GPU (and a CPU) on CUDA,
`trainer.cpus_per_worker` logical CPUs on CPU. Rank r lives in bundle r % per_node of placement group r // per_node,
so ranks 0..per_node-1 are on the first node, the next per_node on the second, and so on; `LOCAL_RANK` is a rank's
index among the ranks on its node. Several worker groups may use the same pool (PPO's actor and critic, as verl
colocates them): each takes a `share` of every bundle (0.5 GPU each for two groups), so a rank of the actor and the
same rank of the critic see the same GPU, and PPO on 4 GPUs needs 4 GPUs, not 8.

`plan_pool` is the same arithmetic without Ray (the launcher's dry run prints it); `ResourcePool` makes it real and
reports, per rank, the node id and IP Ray chose. `visible_gpus` keeps GPUs of this node out of a local cluster (e.g.
those of a simulation server started on the same node: `trainer.exclude_gpus`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import ray

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolPlan:
    """The resources a pool reserves: `nnodes` nodes x `per_node` bundles of `cpus` CPUs and `gpus` GPUs each."""

    nnodes: int
    per_node: int
    device: str
    cpus: float  # per bundle
    gpus: float  # per bundle (1 on CUDA, 0 on CPU)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.per_node

    def bundle(self) -> dict[str, float]:
        out = {"CPU": self.cpus}
        if self.gpus:
            out["GPU"] = self.gpus
        return out

    def total(self, key: str) -> float:
        return self.world_size * self.bundle().get(key, 0.0)

    def describe(self, groups: Sequence[str] = ("actor",)) -> str:
        """One line: nodes, bundles and what each colocated group takes of a bundle."""
        share = 1.0 / max(1, len(groups))
        unit = "GPU" if self.gpus else "CPU"
        each = self.gpus if self.gpus else self.cpus
        names = ", ".join(f"{g} {self.world_size} x {each * share:g} {unit}" for g in groups)
        return (f"placement: {self.nnodes} node(s) x {self.per_node} bundle(s) {self.bundle()}: "
                f"{self.total(unit):g} {unit} in all; {names}{' (colocated)' if len(groups) > 1 else ''}")


def plan_pool(nnodes: int, per_node: int, device: str, cpus_per_worker: float) -> PoolPlan:
    """The pool of `trainer.nnodes` x `trainer.n_gpus_per_node` ranks on `device` (cpu | cuda)."""
    if nnodes < 1 or per_node < 1:
        raise ValueError(f"trainer.nnodes ({nnodes}) and trainer.n_gpus_per_node ({per_node}) must be >= 1")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"placement device must be cpu or cuda (resolve trainer.device=auto first), got {device!r}")
    if cpus_per_worker <= 0:
        raise ValueError(f"trainer.cpus_per_worker must be > 0, got {cpus_per_worker}")
    if device == "cuda":
        return PoolPlan(nnodes, per_node, device, cpus=min(cpus_per_worker, 1.0), gpus=1.0)
    return PoolPlan(nnodes, per_node, device, cpus=cpus_per_worker, gpus=0.0)


def visible_gpus(cuda_visible_devices: str | None, device_count: int, exclude: Sequence[int]) -> list[int]:
    """The GPU ids of this node left for the trainer once `exclude` (trainer.exclude_gpus) is taken out; the node's
    ids come from CUDA_VISIBLE_DEVICES when it is set, else 0..device_count-1."""
    if cuda_visible_devices:
        try:
            visible = [int(x) for x in cuda_visible_devices.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"trainer.exclude_gpus needs numeric CUDA_VISIBLE_DEVICES, got {cuda_visible_devices!r}; "
                             "list the trainer's GPUs there instead and drop trainer.exclude_gpus") from None
    else:
        visible = list(range(device_count))
    unknown = sorted(set(exclude) - set(visible))
    if unknown:
        raise ValueError(f"trainer.exclude_gpus names GPU(s) {unknown} that this node does not have (visible: "
                         f"{visible}); list ids from CUDA_VISIBLE_DEVICES / nvidia-smi")
    left = [g for g in visible if g not in set(exclude)]
    if not left:
        raise ValueError(f"trainer.exclude_gpus={list(exclude)} leaves no GPU for the trainer")
    return left


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_fits(plan: PoolPlan, name: str, free_wait_s: float = 10.0) -> None:
    """Fail early (instead of hanging on a pending placement group) when the cluster cannot host the pool. Resources
    freed just before (a removed pool) reach Ray's view within about a second: wait up to `free_wait_s` for them."""
    import time

    if not ray.is_initialized():
        raise RuntimeError(f"Ray is not initialised: call ray.init() (e.g. ray.init(num_cpus=2)) before creating the "
                           f"{name!r} worker group")
    key = "GPU" if plan.device == "cuda" else "CPU"
    hint = ("lower trainer.n_gpus_per_node" if key == "GPU" else
            "lower trainer.n_gpus_per_node (workers per node) or trainer.cpus_per_worker (fractions share cores)")
    if plan.nnodes > 1:
        hint += f" or trainer.nnodes={plan.nnodes}"
    need, have = plan.total(key), ray.cluster_resources().get(key, 0.0)
    if need > have + 1e-9:
        raise ValueError(f"worker group {name!r} needs {need:g} {key} ({plan.world_size} workers) but the Ray cluster "
                         f"has {have:g}: {hint}")
    deadline = time.monotonic() + free_wait_s
    while (free := ray.available_resources().get(key, 0.0)) < need - 1e-9 and time.monotonic() < deadline:
        time.sleep(0.1)
    if need > free + 1e-9:
        raise ValueError(f"worker group {name!r} needs {need:g} {key} ({plan.world_size} workers) but only {free:g} of "
                         f"the cluster's {have:g} are free (other worker groups hold the rest): {hint}")
    per_pg = plan.per_node * plan.bundle()[key]
    hosts = sum(int(n["Resources"].get(key, 0.0) / per_pg + 1e-9) for n in _alive_nodes())
    if hosts < plan.nnodes:
        raise ValueError(f"worker group {name!r} needs {plan.nnodes} node(s) with {per_pg:g} {key} each "
                         f"(trainer.nnodes={plan.nnodes}, trainer.n_gpus_per_node={plan.per_node}), but the cluster's "
                         f"nodes host {hosts}: lower trainer.nnodes or trainer.n_gpus_per_node, or add nodes "
                         "(ray start --address=HEAD:6379 on each)")


class ResourcePool:
    """`plan.nnodes` placement groups of `plan.per_node` bundles, reserved now; `remove()` frees them."""

    def __init__(self, plan: PoolPlan, name: str = "pool", ready_timeout_s: float = 300.0) -> None:
        from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

        check_fits(plan, name)
        self.plan, self.name = plan, name
        self._pgs = [placement_group([plan.bundle()] * plan.per_node, strategy="STRICT_PACK", name=f"{name}_node{i}")
                     for i in range(plan.nnodes)]
        try:
            ray.get([pg.ready() for pg in self._pgs], timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            for pg in self._pgs:
                remove_placement_group(pg)
            raise RuntimeError(f"resource pool {name!r}: {plan.nnodes} placement group(s) of {plan.per_node} x "
                               f"{plan.bundle()} not placed after {ready_timeout_s:.0f} s; see `ray status` "
                               "(trainer.nnodes, trainer.n_gpus_per_node, trainer.cpus_per_worker)") from e
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in _alive_nodes()}
        self.node_ids: list[str] = []  # per rank
        for pg in self._pgs:
            to_node = placement_group_table(pg)["bundles_to_node_id"]
            self.node_ids += [to_node[b] for b in range(plan.per_node)]
        self.node_ips = [ips.get(n, "") for n in self.node_ids]
        self.local_ranks = [self.node_ids[:r].count(n) for r, n in enumerate(self.node_ids)]
        self.local_world_sizes = [self.node_ids.count(n) for n in self.node_ids]
        logger.info("resource pool %r: %s on nodes %s", name, plan.describe(), sorted(set(self.node_ips)))

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    def scheduling(self, rank: int):
        """The Ray scheduling strategy that puts `rank` in its bundle (child tasks are not captured: a vLLM engine
        inside the actor places its own processes)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg, bundle = self._pgs[rank // self.plan.per_node], rank % self.plan.per_node
        return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle,
                                                placement_group_capture_child_tasks=False)

    def remove(self, wait_s: float = 10.0) -> None:
        """Free the bundles; waits (up to `wait_s`) until Ray reports them removed, so the next pool finds them."""
        import time

        from ray.util.placement_group import placement_group_table, remove_placement_group

        pgs, self._pgs = self._pgs, []
        try:
            for pg in pgs:
                remove_placement_group(pg)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(placement_group_table(pg).get("state") != "REMOVED"
                                                      for pg in pgs):
                time.sleep(0.05)
        except Exception:  # Ray already shut down
            logger.debug("placement groups already gone", exc_info=True)


class PlacementProbe:
    """A worker that only reports where it runs (a dry run's placement, and tests): no model, no process group."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def where(self) -> dict[str, str]:
        keys = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "CUDA_VISIBLE_DEVICES", "WORKER_GROUP")
        out = {k: os.environ.get(k, "") for k in keys}
        out.update(node_id=ray.get_runtime_context().get_node_id(), ip=ray.util.get_node_ip_address())
        return out
