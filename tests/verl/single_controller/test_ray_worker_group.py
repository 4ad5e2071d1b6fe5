"""RayWorkerGroup on a real local Ray cluster: dispatch order, padding, list dispatch, gloo collectives, errors."""

from __future__ import annotations

import os
import sys

import pytest
import ray
import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.single_controller import RayWorkerGroup, Worker, reduce_metrics
from verl.workers.rollout.base import SamplingParams

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test classes travel by value to the actors


class Echo:
    """A worker without a process group: tags rows with its rank."""

    def __init__(self, offset: int = 0) -> None:
        self.rank = int(os.environ["RANK"])
        self.offset = offset

    def env(self) -> dict[str, str]:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "EXTRA")
        return {k: os.environ.get(k, "") for k in keys}

    def tag(self, data: DataProto, scale: int = 1) -> DataProto:
        x = data.batch["x"]
        return DataProto.from_dict({"y": x * scale + self.offset, "rank": torch.full_like(x, self.rank)},
                                   {"name": list(data.non_tensor_batch["name"])})

    def repeat(self, items: list[int], n: int) -> list[tuple[int, int]]:
        return [(item, self.rank) for item in items for _ in range(n)]

    def metrics(self) -> dict[str, float]:
        return {"loss": float(self.rank), "const": 2.0}

    def caps(self, items: list[int], params: SamplingParams) -> list[tuple[int, int, int]]:
        return [(item, params.max_tokens_of(i), self.rank) for i, item in enumerate(items)]


class Summer(Worker):
    """A worker that joins a gloo process group in its constructor."""

    def __init__(self) -> None:
        super().__init__("cpu")

    def all_reduce(self, value: float) -> float:
        t = torch.tensor([value])
        dist.all_reduce(t)
        return float(t.item())

    def backend(self) -> str:
        return dist.get_backend()

    def budget_micro_sizes(self, lengths_by_rank: list[list[int]], max_tokens: int) -> list[int]:
        """Rows per token-budget micro-batch of this rank's rows (real lengths as attention masks)."""
        from verl.workers.actor import micro_batches

        lengths = lengths_by_rank[dist.get_rank()]
        mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
        parts, _ = micro_batches(DataProto.from_dict({"attention_mask": mask}), 1, True, max_tokens)
        return [len(p) for p in parts]


def test_not_initialised_error() -> None:
    if ray.is_initialized():
        pytest.skip("Ray already running in this process")
    with pytest.raises(RuntimeError, match="ray.init"):
        RayWorkerGroup(Echo, 1)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def echo_group(cluster):
    wg = RayWorkerGroup(Echo, 2, init_kwargs={"offset": 1000}, cpus_per_worker=0.5, name="echo",
                        env={"EXTRA": "yes"})
    yield wg
    wg.shutdown()


def test_env_and_execute(echo_group: RayWorkerGroup) -> None:
    envs = echo_group.execute_all("env")
    assert [e["RANK"] for e in envs] == ["0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["MASTER_ADDR"] for e in envs} == {echo_group.node_ips[0]}  # rank 0's node IP
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1"]
    assert len({e["MASTER_PORT"] for e in envs}) == 1 and int(envs[0]["MASTER_PORT"]) > 0
    assert {e["EXTRA"] for e in envs} == {"yes"}
    assert echo_group.execute_rank0("env")["RANK"] == "0"


def test_dispatch_dp_pads_and_keeps_order(echo_group: RayWorkerGroup) -> None:
    data = DataProto.from_dict({"x": torch.arange(5)}, {"name": [f"s{i}" for i in range(5)]})
    out = echo_group.dispatch_dp("tag", data, scale=10)
    assert len(out) == 5
    assert out.batch["y"].tolist() == [1000, 1010, 1020, 1030, 1040]
    assert out.batch["rank"].tolist() == [0, 0, 0, 1, 1]  # padded to 6: 3 rows per rank, the pad row dropped
    assert list(out.non_tensor_batch["name"]) == ["s0", "s1", "s2", "s3", "s4"]


def test_dispatch_dp_exact_rejects_uneven(echo_group: RayWorkerGroup) -> None:
    data = DataProto.from_dict({"x": torch.arange(3)}, {"name": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="n_gpus_per_node"):
        echo_group.dispatch_dp_exact("tag", data)
    outs = echo_group.dispatch_dp_exact("tag", data[:2])
    assert [o.batch["rank"].tolist() for o in outs] == [[0], [1]]


def test_dispatch_dp_list_uneven_and_repeated(echo_group: RayWorkerGroup) -> None:
    out = echo_group.dispatch_dp_list("repeat", [10, 11, 12], 2)
    assert out == [(10, 0), (10, 0), (11, 0), (11, 0), (12, 1), (12, 1)]
    assert echo_group.dispatch_dp_list("repeat", [7], 1) == [(7, 0)]  # rank 1 gets an empty list
    assert echo_group.dispatch_dp_list("repeat", [], 3) == []


def test_dispatch_dp_list_slices_per_prompt_caps(echo_group: RayWorkerGroup) -> None:
    params = SamplingParams(max_tokens=50, max_tokens_per_prompt=[5, 6, 70])
    assert echo_group.dispatch_dp_list("caps", [10, 11, 12], params) == [(10, 5, 0), (11, 6, 0), (12, 50, 1)]
    assert echo_group.dispatch_dp_list("caps", [10, 11], SamplingParams(max_tokens=9)) == [(10, 9, 0), (11, 9, 1)]


def test_reduce_metrics(echo_group: RayWorkerGroup) -> None:
    assert reduce_metrics(echo_group.execute_all("metrics")) == {"loss": 0.5, "const": 2.0}
    assert reduce_metrics([{"a": [1.0, 3.0]}, {"a": 4.0, "b": 1.0}]) == {"a": 3.0, "b": 1.0}


def test_unknown_method(echo_group: RayWorkerGroup) -> None:
    with pytest.raises(Exception, match="no method 'nope'"):
        echo_group.execute_all("nope")


def test_gloo_all_reduce_across_actors(cluster) -> None:
    wg = RayWorkerGroup(Summer, 2, cpus_per_worker=0.5, name="summer")
    try:
        assert wg.execute_all("backend") == ["gloo", "gloo"]
        assert ray.get(wg.execute_all_async("all_reduce", 1.5)) == [3.0, 3.0]
        refs = [a.call.remote("all_reduce", float(r + 1)) for r, a in enumerate(wg._actors)]
        assert ray.get(refs) == [3.0, 3.0]
        # token-budget micro-batches: rank 0 fits in one, rank 1 needs three; both run three forwards
        sizes = wg.execute_all("budget_micro_sizes", [[5, 6, 7, 8], [5, 15, 30, 40]], 40)
        assert sizes == [[2, 1, 1], [2, 1, 1]]
    finally:
        wg.shutdown()


def test_insufficient_resources_error(cluster) -> None:
    with pytest.raises(ValueError, match="trainer.cpus_per_worker"):
        RayWorkerGroup(Echo, 3, cpus_per_worker=1.0, name="too_big")
    with pytest.raises(ValueError, match="n_gpus_per_node"):
        RayWorkerGroup(Echo, 1, device="cuda", name="no_gpu")
