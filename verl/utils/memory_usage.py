"""Measured memory peaks per training step, logged next to the memory plan so that every run checks the plan.

Each step the driver calls `reset_peaks()` in itself and in every worker, and `read_peaks()` at the end; the
trainer logs `step_metrics(...)`: `perf/max_memory_rss_gb/<process>` (measured) beside
`perf/max_memory_planned_gb/<process>` (`MemoryPlan.metrics`), with process one of driver, actor (a worker of the
actor/reference/rollout group, the largest rank), rollout (the rollout engine's child processes of that worker,
e.g. vLLM's EngineCore and model runner, summed), critic, and total (the machine, single-node runs). On CUDA also
verl's `perf/max_memory_allocated_gb` / `perf/max_memory_reserved_gb` (torch's peaks, largest rank).

Peak RSS on Linux: writing "5" to /proc/<pid>/clear_refs resets the kernel's high-water mark VmHWM to the current
RSS, and /proc/<pid>/status reports it; before the reset glibc is asked to return freed heap pages
(malloc_trim), so a step's peak is measured from its live memory. Elsewhere the current RSS stands in (psutil).

The machine (`machine_budget`, for the memory plan at start-up): its RAM (or cgroup limit), Ray's kill threshold,
the RAM other processes use now, and on CUDA the GPU's memory; or `trainer.memory_limit_gb`.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from verl.utils.memory_plan import GB, Budget

if TYPE_CHECKING:
    from verl.trainer.config import PPOConfig

logger = logging.getLogger(__name__)


def _status_bytes(pid: int | str, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _children() -> list:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _reset_hwm(pid: int | str) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:  # not Linux, or the process is gone
        pass


def peak_rss(pid: int | str = "self") -> float:
    """Bytes: the process's peak RSS since the last reset (VmHWM), or its current RSS where /proc has none."""
    hwm = _status_bytes(pid, "VmHWM")
    if hwm is not None:
        return hwm
    import psutil

    try:
        proc = psutil.Process() if pid == "self" else psutil.Process(int(pid))
        return float(proc.memory_info().rss)
    except psutil.Error:
        return 0.0


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peaks(cuda: bool = False, children: bool = True) -> None:
    """Start a measurement: this process, its children (the rollout engine's processes), torch's CUDA peak."""
    trim_heap()
    _reset_hwm("self")
    for child in _children() if children else ():
        _reset_hwm(child.pid)
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()


def read_peaks(cuda: bool = False, children: bool = True) -> dict[str, float]:
    """GB since `reset_peaks`: rss (this process), children_rss (its descendants' peaks, summed), and on CUDA
    cuda_allocated / cuda_reserved (torch's peaks on the current device)."""
    kids = sum(peak_rss(c.pid) for c in _children()) if children else 0.0
    out = {"rss": peak_rss("self") / GB, "children_rss": kids / GB}
    if cuda:
        import torch

        out["cuda_allocated"] = torch.cuda.max_memory_allocated() / GB
        out["cuda_reserved"] = torch.cuda.max_memory_reserved() / GB
    return out


def step_metrics(driver: dict[str, float], actor: list[dict[str, float]], critic: list[dict[str, float]] | None = None,
                 planned: dict[str, float] | None = None, single_node: bool = True) -> dict[str, float]:
    """`perf/max_memory_*` metrics of one step from `read_peaks()` of the driver and of every rank."""
    key = "perf/max_memory_rss_gb/"
    out = {key + "driver": driver["rss"]}
    groups = {"actor": actor, "critic": critic or []}
    for name, ranks in groups.items():
        if ranks:
            out[key + name] = max(r["rss"] for r in ranks)
    if any(r["children_rss"] > 0 for r in actor):
        out[key + "rollout"] = max(r["children_rss"] for r in actor)
    if single_node:
        out[key + "total"] = driver["rss"] + sum(r["rss"] + r["children_rss"] for rs in groups.values() for r in rs)
    for name in ("cuda_allocated", "cuda_reserved"):
        values = [r[name] for r in actor if name in r]
        if values:
            out[f"perf/max_memory_{name.removeprefix('cuda_')}_gb"] = max(values)
    out.update(planned or {})
    return out


# --------------------------------------------------------------------------------------------- the machine
def machine_ram() -> float:
    """Total RAM, or the cgroup's memory limit when it is lower (Ray's monitor reads the same)."""
    import psutil

    total = float(psutil.virtual_memory().total)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, float(text))
    return total


def ray_kill_threshold() -> float:
    """The fraction of RAM at which Ray's memory monitor kills workers."""
    if os.environ.get("RAY_memory_monitor_refresh_ms", "").strip() == "0":
        return 1.0
    try:
        return float(os.environ.get("RAY_memory_usage_threshold", "0.95"))
    except ValueError:
        return 0.95


def ram_in_use_by_others() -> float:
    """RAM in use on this machine now (what Ray's monitor counts: total - available), this process excluded (the
    plan counts it as the driver)."""
    import psutil

    vm = psutil.virtual_memory()
    return max(0.0, float(vm.total - vm.available - psutil.Process().memory_info().rss))


def machine_budget(cfg: PPOConfig, device: str) -> Budget:
    """trainer.memory_limit_gb for the RAM (CPU) or each GPU (CUDA); else the RAM x Ray's kill threshold, less what
    other processes (the launcher, other jobs) use now, and the GPU's memory."""
    t = cfg.trainer
    if device != "cuda" and t.memory_limit_gb:
        return Budget(t.memory_limit_gb * GB, "trainer.memory_limit_gb")
    ram, threshold = machine_ram(), ray_kill_threshold()
    # the launcher's simulation server already runs and is counted as trainer.colocated_server_gb
    others = max(0.0, ram_in_use_by_others() - t.colocated_server_gb * GB)
    gpu, gpu_src = 0.0, ""
    if device == "cuda":
        import torch

        gpu, gpu_src = float(torch.cuda.get_device_properties(0).total_memory), "GPU memory"
        if t.memory_limit_gb:
            gpu, gpu_src = t.memory_limit_gb * GB, "trainer.memory_limit_gb"
    return Budget(ram * threshold, f"RAM {ram / GB:.1f} GB x Ray kill threshold {threshold:g}", gpu, gpu_src, others)
