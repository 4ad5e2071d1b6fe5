"""torch.distributed set-up inside a worker process, and the `Worker` base class.

A `RayWorkerGroup` starts one process per rank and puts RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT in its environment; a worker calls `init_dist` (the `Worker` base class does it in its
constructor) to join the group's process group: `nccl` on CUDA, `gloo` on CPU. Every group has its own
port, so an actor group and a critic group are independent process groups in separate processes.
Also here: device resolution (`auto` -> cuda if available, else cpu) and the torch thread budget.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; `cpu`/`cuda` pass through (cuda is checked)."""
    if device not in DEVICES:
        raise ValueError(f"trainer.device must be one of {list(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu (or auto)")
    return device


def find_free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_torch_threads(threads: int, workers_per_node: int) -> int:
    """Set torch's intra-op threads: `threads` if > 0, else cores // workers_per_node (at least 1)."""
    n = threads if threads > 0 else max(1, available_cores() // max(1, workers_per_node))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def init_dist(device: str = "cpu", timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the default process group from the env (RANK, WORLD_SIZE, MASTER_ADDR/PORT); idempotent.

    Returns (rank, world_size). Without RANK in the env (a plain single process) a 1-rank group on a
    free port is created, so the same worker code runs in a test process.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(find_free_port())})
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return rank, world_size


def destroy_dist() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Worker:
    """Base class of distributed workers: joins the process group and knows its rank and device.

    `device` is resolved here (`auto` -> cuda/cpu), so every rank of a group agrees on the backend.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device_type = resolve_device(device)
        self.rank, self.world_size = init_dist(self.device_type)
        if self.device_type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    def get_rank(self) -> int:
        return self.rank

    def all_reduce_sum(self, value: float) -> float:
        """Sum of a Python float over all ranks (a collective: every rank must call it)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())
