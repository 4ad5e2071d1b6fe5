"""RayWorkerGroup: N Ray actors running one worker class, driven from a single controller.

The driver owns the dataflow; a worker group owns `world_size` processes (Ray actors), one per rank,
each with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in its environment so the worker
can join a torch.distributed group (see `dist.Worker`). Dispatch modes, all blocking and ordered by rank:

- `execute_all(method, ...)`: every rank, same arguments, list of results in rank order;
- `execute_rank0(method, ...)`: rank 0 only (never for methods that run collectives);
- `dispatch_dp(method, data)`: data parallel over a DataProto: pad to a multiple of world_size, chunk,
  rank i gets chunk i, outputs concatenated in rank order and unpadded (equal chunks, because FSDP ranks
  must run the same number of forward passes);
- `dispatch_dp_list(method, items, ...)`: the same for a plain list (e.g. token-id prompts), split into
  contiguous chunks whose sizes differ by at most one instead of padding (generation runs no per-item
  collective, so no rank needs to do duplicate work; every rank is still called, possibly with an empty
  list); an output list may be k times its input (n samples per prompt, prompt-major) and keeps that order.

Placement (`verl.single_controller.placement`): a group runs in a `ResourcePool`, one placement group per node,
rank r in bundle r % per_node of node r // per_node; groups that share a pool take a `share` of each bundle (PPO's
critic beside the actor, on the same GPU). Without a pool a group reserves its own (one node of `world_size`
bundles of `cpus_per_worker` CPUs, or one GPU each on CUDA) and frees it at shutdown. The actors start empty; rank 0
reports its node's IP and a free port there, which become every rank's MASTER_ADDR / MASTER_PORT, and only then
are the workers built (they rendezvous in their constructors). LOCAL_RANK is the rank's index on its node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from verl.protocol import DataProto
from verl.single_controller.placement import ResourcePool, plan_pool
from verl.utils import console, faults

logger = logging.getLogger(__name__)


class _WorkerHost:
    """The Ray actor: starts empty (so rank 0 can report its node's address first), then `start` sets the rank's
    environment and builds the user's worker class inside it."""

    def __init__(self) -> None:
        self.worker = None
        self.label = "_WorkerHost"

    def __repr__(self) -> str:  # Ray names the actor by this in its errors and log prefixes
        return self.label

    def node_info(self) -> dict[str, Any]:
        """This process's node (IP, Ray node id), a TCP port free on that node, pid and visible GPUs."""
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return {"ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                "free_port": port, "pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def start(self, worker_cls: type, env: dict[str, str], args: tuple, kwargs: dict) -> int:
        os.environ.update(env)
        self.label = f"{env.get('WORKER_GROUP', 'worker')} rank {env.get('RANK', '?')}"
        console.redirect_worker_output(self.label)  # a quiet run: this process's output -> the run log
        self.worker = worker_cls(*args, **kwargs)
        return os.getpid()

    def close(self) -> None:
        """Let the worker release what it owns (e.g. a vLLM engine's processes) before the actor dies."""
        close = getattr(self.worker, "close", None)
        if callable(close):
            close()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.worker, method, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"{type(self.worker).__name__} has no method {method!r}")
        return fn(*args, **kwargs)


class RayWorkerGroup:
    """`world_size` Ray actors each hosting `worker_cls(*init_args, **init_kwargs)`, one per bundle of a
    `ResourcePool` (its own unless `resource_pool` is given), each taking `share` of its bundle."""

    def __init__(self, worker_cls: type, world_size: int, *, init_args: Sequence[Any] = (),
                 init_kwargs: dict[str, Any] | None = None, device: str = "cpu", cpus_per_worker: float = 1.0,
                 name: str = "actor", env: dict[str, str] | None = None, ready_timeout_s: float = 900.0,
                 max_concurrency: int = 1, resource_pool: ResourcePool | None = None, share: float = 1.0) -> None:
        if world_size < 1:
            raise ValueError(f"worker group {name!r}: world_size must be >= 1 (trainer.n_gpus_per_node), "
                             f"got {world_size}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"worker group {name!r}: device must be 'cpu' or 'cuda' (resolve 'auto' first), "
                             f"got {device!r}")
        if not 0 < share <= 1:
            raise ValueError(f"worker group {name!r}: share of a bundle must be in (0, 1], got {share}")
        self.name, self.world_size, self.device = name, world_size, device
        self.max_concurrency = max(1, int(max_concurrency))
        self._actors: list = []
        self._own_pool = resource_pool is None
        if resource_pool is None:
            resource_pool = ResourcePool(plan_pool(1, world_size, device, cpus_per_worker), name=name)
        elif resource_pool.world_size != world_size or resource_pool.plan.device != device:
            raise ValueError(f"worker group {name!r}: {world_size} {device} workers do not match the resource pool's "
                             f"{resource_pool.world_size} {resource_pool.plan.device} bundles")
        self.pool = resource_pool
        self.node_ids, self.node_ips = list(resource_pool.node_ids), list(resource_pool.node_ips)
        self.local_ranks = list(resource_pool.local_ranks)
        bundle = resource_pool.plan.bundle()
        # max_concurrency > 1 (the asynchronous rollout): a threaded actor, so single requests (`submit`) run while
        # others wait on the engine; the driver still calls the other methods one at a time
        options: dict[str, Any] = {"max_concurrency": max(1, int(max_concurrency)), "num_cpus": bundle["CPU"] * share,
                                   "num_gpus": bundle.get("GPU", 0.0) * share}
        remote_cls = ray.remote(_WorkerHost)
        self._pids: list[int | None] = [None] * world_size
        try:
            self._actors = [remote_cls.options(**options, scheduling_strategy=resource_pool.scheduling(r)).remote()
                            for r in range(world_size)]
            rank0 = self._get([self._actors[0].node_info.remote()], "node_info", timeout=ready_timeout_s)[0]
            self.master_addr, self.master_port = rank0["ip"], int(rank0["free_port"])
            refs = []
            for rank, actor in enumerate(self._actors):
                rank_env = {**console.worker_env(), **faults.worker_env(),
                            **{k: str(v) for k, v in (env or {}).items()}}
                rank_env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(self.local_ranks[rank]),
                                LOCAL_WORLD_SIZE=str(resource_pool.local_world_sizes[rank]),
                                MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port), WORKER_GROUP=name)
                refs.append(actor.start.remote(worker_cls, rank_env, tuple(init_args), dict(init_kwargs or {})))
            # constructors run in parallel (they rendezvous for the process group); surface their errors here
            self._pids = self._get(refs, "__init__", timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            self.shutdown()
            raise RuntimeError(f"worker group {name!r}: workers not ready after {ready_timeout_s:.0f} s; the Ray "
                               "cluster may lack free resources (see `ray status`; trainer.cpus_per_worker / "
                               "trainer.n_gpus_per_node)") from e
        except Exception:
            self.shutdown()
            raise
        logger.info("worker group %r: %d %s workers up on %d node(s), rendezvous %s:%d", name, world_size, device,
                    len(set(self.node_ids)), self.master_addr, self.master_port)

    def node_info(self) -> list[dict[str, Any]]:
        """Per rank: the node (ip, node_id), pid and CUDA_VISIBLE_DEVICES of its process (placement checks)."""
        return self._get([a.node_info.remote() for a in self._actors], "node_info")

    # ------------------------------------------------------------------ results and failures
    def _get(self, refs: list[ray.ObjectRef], method: str, timeout: float | None = None) -> list[Any]:
        """`ray.get` of one ref per rank (rank order); a failure is re-raised tagged with the failing worker."""
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise
        except ray.exceptions.RayError as e:
            raise self._blame(refs, method, e) from None

    def _blame(self, refs: list[ray.ObjectRef], method: str, first: Exception) -> Exception:
        """The root failure among the ranks (killed for memory > died > raised: when one rank dies, the others fail
        in their collectives), tagged `worker_group`, `worker_rank`, `worker_method`, `worker_pid`."""
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=2.0)
        failed: list[tuple[int, Exception]] = []
        for rank, ref in enumerate(refs):
            if ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.RayError as err:
                    failed.append((rank, err))
        rank, err = min(failed or [(None, first)], key=lambda f: _severity(f[1]))
        err.worker_group, err.worker_rank, err.worker_method = self.name, rank, method
        err.worker_pid = self._pids[rank] if rank is not None and rank < len(getattr(self, "_pids", [])) else None
        return err

    # ------------------------------------------------------------------ plain dispatch
    def execute_all_async(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Call `method` on every rank with the same arguments; returns object refs in rank order."""
        return [a.call.remote(method, *args, **kwargs) for a in self._actors]

    def execute_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._get(self.execute_all_async(method, *args, **kwargs), method)

    def execute_rank0(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Rank 0 only: for methods without collectives (rank 0 would wait forever for the others)."""
        return self._get([self._actors[0].call.remote(method, *args, **kwargs)], method)[0]

    def submit(self, rank: int, method: str, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        """Call `method` on one rank only, without waiting (awaitable ref; the asynchronous rollout's requests)."""
        return self._actors[rank].call.remote(method, *args, **kwargs)

    # ------------------------------------------------------------------ data-parallel dispatch
    def dispatch_dp_async(self, method: str, data: DataProto, **kwargs: Any) -> tuple[list[ray.ObjectRef], int]:
        """Pad `data` to a multiple of world_size, send chunk i to rank i; returns (refs, pad_size)."""
        padded, pad_size = data.pad_to_divisor(self.world_size)
        chunks = padded.chunk(self.world_size)
        return [a.call.remote(method, c, **kwargs) for a, c in zip(self._actors, chunks)], pad_size

    def collect_dp(self, refs: list[ray.ObjectRef], pad_size: int, method: str = "dispatch_dp") -> Any:
        """Gather `dispatch_dp_async` results: DataProtos are concatenated (rank order) and unpadded;
        anything else (e.g. metric dicts) is returned as the per-rank list."""
        outputs = self._get(refs, method)
        if all(isinstance(o, DataProto) for o in outputs):
            return DataProto.concat(outputs).unpad(pad_size)
        return outputs

    def dispatch_dp(self, method: str, data: DataProto, **kwargs: Any) -> Any:
        """Data-parallel call over a DataProto (see `collect_dp` for the return value)."""
        refs, pad_size = self.dispatch_dp_async(method, data, **kwargs)
        return self.collect_dp(refs, pad_size, method)

    def dispatch_dp_exact(self, method: str, data: DataProto, **kwargs: Any) -> list[Any]:
        """Data parallel without padding (for updates, where a duplicated row would bias the gradient):
        len(data) must divide by world_size. Returns the per-rank results."""
        if len(data) % self.world_size:
            raise ValueError(f"worker group {self.name!r}: a batch of {len(data)} rows does not split evenly over "
                             f"{self.world_size} workers; make data.train_batch_size * rollout.n divisible by "
                             "trainer.n_gpus_per_node")
        chunks = data.chunk(self.world_size)
        return self._get([a.call.remote(method, c, **kwargs) for a, c in zip(self._actors, chunks)], method)

    def dispatch_dp_list(self, method: str, items: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Split a list into contiguous near-equal chunks, rank i gets chunk i, outputs concatenated in order.
        Every rank is called, with an empty list if there are fewer items than ranks (so a method may run a
        collective, e.g. a pending weight sync). An output of k * len(chunk) items (n samples per prompt) is fine.
        A positional argument with a `for_items(start, stop)` method (SamplingParams with per-prompt caps) is
        sliced along with the items."""
        items = list(items)
        base, extra = divmod(len(items), self.world_size)
        refs, start = [], 0
        for rank, actor in enumerate(self._actors):
            size = base + (1 if rank < extra else 0)
            stop = start + size
            rank_args = [a.for_items(start, stop) if hasattr(a, "for_items") else a for a in args]
            refs.append(actor.call.remote(method, items[start:stop], *rank_args, **kwargs))
            start = stop
        out: list[Any] = []
        for part in self._get(refs, method):
            out.extend(part)
        return out

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self, close_timeout_s: float = 60.0) -> None:
        """Ask every worker to `close()` (if it has one), then kill the actors (their process group dies too)."""
        actors = getattr(self, "_actors", [])
        if actors:
            try:
                ray.get([a.close.remote() for a in actors], timeout=close_timeout_s)
            except ray.exceptions.RayActorError:  # a worker already died (its failure was reported)
                logger.info("worker group %r: some workers were already dead at shutdown", self.name)
            except Exception:  # a hung worker must not block the shutdown
                logger.warning("worker group %r: close() failed on some workers", self.name, exc_info=True)
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already dead
                logger.debug("actor already gone", exc_info=True)
        self._actors = []
        if getattr(self, "_own_pool", False) and getattr(self, "pool", None) is not None:
            self.pool.remove()
            self.pool = None

    def __len__(self) -> int:
        return self.world_size


def _severity(err: Exception) -> int:
    rx = ray.exceptions
    if isinstance(err, rx.OutOfMemoryError):
        return 0
    if isinstance(err, (rx.RayActorError, rx.WorkerCrashedError)):
        return 1
    return 2 if isinstance(err, rx.RayTaskError) else 3


def reduce_metrics(per_rank: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean over ranks of each metric (ranks that lack a key are ignored for that key)."""
    keys: dict[str, list[float]] = {}
    for metrics in per_rank:
        for k, v in (metrics or {}).items():
            keys.setdefault(k, []).append(float(np.mean(v)) if isinstance(v, (list, tuple, np.ndarray)) else float(v))
    return {k: float(np.mean(v)) for k, v in keys.items()}
