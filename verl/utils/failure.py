"""The failure paragraph: what the driver prints when training dies, instead of Ray's report and a traceback.

`report_failure(exc, cfg)` writes the raw exception (Ray's memory report, the remote traceback) to the run log only
and prints one short paragraph on the console:
- which worker (group and rank, tagged on the exception by `RayWorkerGroup`) and what it was running;
- killed by Ray's memory monitor (`ray.exceptions.OutOfMemoryError`): the worker's memory at the kill, the machine's
  memory and Ray's kill threshold, parsed from Ray's message (`parse_oom_message`: Ray 2.60's wording, and the older
  "memory used=... was 22.4GB / 23.5GB (0.95), which exceeds the memory usage threshold of 0.95");
- died otherwise (SIGKILL, the kernel's OOM killer, a crash): Ray's exit detail and the machine's RAM;
- a Python exception in a worker (`RayTaskError`) or in the driver: its type, message and where it was raised;
- the last complete checkpoint (`latest_checkpointed_iteration.txt`) and how to resume (`trainer.resume_mode=auto`);
- after a memory failure, the keys that lower memory, with their current values.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl.utils import console, progress

logger = logging.getLogger(__name__)
GB = 1e9
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class OomInfo:
    """What Ray's memory monitor said when it killed a worker (None: not in the message)."""

    worker_gb: float | None = None  # the killed worker's memory
    pid: int | None = None
    task: str | None = None
    node_used_gb: float | None = None
    node_total_gb: float | None = None  # the machine's memory as Ray counts it ("limit")
    threshold: float | None = None  # fraction of node_total_gb at which Ray kills


def parse_oom_message(text: str) -> OomInfo:
    info = OomInfo()
    selected = text.split("Selected to kill:", 1)[-1]  # Ray 2.60 lists the killed worker there; older: the task
    if m := re.search(r"(?:actual )?memory used=(\d+(?:\.\d+)?)\s*GB", selected):
        info.worker_gb = float(m.group(1))
    if m := re.search(r"pid=(\d+)", selected):
        info.pid = int(m.group(1))
    if m := re.search(r"(?:task name|name)=([^,)\s]+)", selected):
        info.task = m.group(1)
    if m := re.search(r"was (\d+(?:\.\d+)?)\s*GB used / (\d+(?:\.\d+)?)\s*GB limit", text):  # Ray 2.60
        info.node_used_gb, info.node_total_gb = float(m.group(1)), float(m.group(2))
    elif m := re.search(r"was (\d+(?:\.\d+)?)\s*GB / (\d+(?:\.\d+)?)\s*GB \(\d+(?:\.\d+)?\)", text):  # older Ray
        info.node_used_gb, info.node_total_gb = float(m.group(1)), float(m.group(2))
    if m := re.search(r"exceeded threshold of \d+B \((\d+(?:\.\d+)?)% of", text):
        info.threshold = float(m.group(1)) / 100
    elif m := re.search(r"exceeds the memory usage threshold of (\d+(?:\.\d+)?)", text):
        info.threshold = float(m.group(1))
    return info


def _ray_errors() -> dict[str, tuple[type, ...]]:
    if "ray" not in sys.modules:
        return {"oom": (), "died": (), "raised": ()}
    from ray import exceptions as rx

    died = tuple(getattr(rx, n) for n in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                                          "ActorUnavailableError") if hasattr(rx, n))
    return {"oom": (rx.OutOfMemoryError,), "died": died, "raised": (rx.RayTaskError,)}


def _is_memory_error(exc: BaseException | None) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"  # torch's on GPU


def classify(exc: BaseException) -> str:
    """oom (Ray's memory monitor), died (a worker process gone), raised (a worker's Python exception), driver."""
    kinds = _ray_errors()
    if isinstance(exc, kinds["oom"]):
        return "oom"
    if isinstance(exc, kinds["died"]):
        return "died"
    if isinstance(exc, kinds["raised"]):
        return "raised"
    return "driver"


def who(exc: BaseException, pid: int | None = None) -> str:
    """`worker <group> rank <r> (pid <p>)` from the tags `RayWorkerGroup` puts on the exception."""
    group, rank = getattr(exc, "worker_group", None), getattr(exc, "worker_rank", None)
    pid = getattr(exc, "worker_pid", None) or pid
    name = f"worker {group} rank {rank}" if group is not None else "a Ray worker"
    return f"{name} (pid {pid})" if pid else name


def during(exc: BaseException) -> str:
    method = getattr(exc, "worker_method", None)
    return f" during {method}" if method else ""


def _machine_memory() -> tuple[float, float] | None:
    """(total, in use) GB from /proc/meminfo, or None."""
    try:
        m = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()}
        return m["MemTotal"] / GB, (m["MemTotal"] - m["MemAvailable"]) / GB
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _one_line(text: str, limit: int = 240) -> str:
    text = _ANSI.sub("", text).strip().splitlines()[0] if text.strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _innermost(frames: list[tuple[str, int, str]]) -> str:
    """` at file:line in fn` of the innermost frame outside installed packages (else the innermost one)."""
    if not frames:
        return ""
    ours = [f for f in frames if "site-packages" not in f[0] and "dist-packages" not in f[0]]
    path, line, fn = (ours or frames)[-1]
    return f" at {Path(path).name}:{line} in {fn}"


def _where(exc: BaseException) -> str:
    """Where a worker's exception was raised, from the remote traceback in Ray's message."""
    found = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', _ANSI.sub("", str(exc)))
    return _innermost([(path, int(line), fn) for path, line, fn in found])


def what_happened(exc: BaseException) -> tuple[str, bool]:
    """(first sentence of the paragraph, whether memory is the likely cause)."""
    kind, text = classify(exc), _ANSI.sub("", str(exc))
    if kind == "oom":
        o = parse_oom_message(text)
        parts = [f"Ray's memory monitor killed {who(exc, o.pid)}{during(exc)}."]
        if o.worker_gb is not None:
            parts.append(f"The worker used {o.worker_gb:.2f} GB;")
        if o.node_total_gb is not None:
            used = f"{o.node_used_gb:.2f} GB of " if o.node_used_gb is not None else ""
            limit = f"the machine was at {used}its {o.node_total_gb:.2f} GB"
            if o.threshold is not None:
                kill_gb = o.threshold * o.node_total_gb
                limit += f", over Ray's kill threshold of {o.threshold * 100:.3g}% ({kill_gb:.2f} GB)"
            parts.append(limit + ".")
        return " ".join(parts), True
    if kind == "died":
        m = re.search(r"Worker exit detail: (.*?)(?:\.\s+Some common causes|\.\s*$|$)", text, re.S)
        detail = f" ({_one_line(m.group(1), 160)})" if m else ""
        pid = re.search(r"pid: (\d+)", text)
        mem = _machine_memory()
        ram = f" The machine has {mem[0]:.1f} GB of RAM, {mem[1]:.1f} GB in use now." if mem else ""
        return (f"{who(exc, int(pid.group(1)) if pid else None)} died{during(exc)} without a Python error{detail}: "
                "killed from outside (the kernel's OOM killer, a SIGKILL) or crashed; its memory at the kill is "
                f"unknown.{ram}"), True
    if kind == "raised":
        cause = getattr(exc, "cause", None)
        desc = f"{type(cause).__name__}: {_one_line(str(cause))}" if cause is not None else _one_line(text)
        return f"{who(exc)} raised {desc}{during(exc)}{_where(exc)}.", _is_memory_error(cause)
    return f"the driver raised {type(exc).__name__}: {_one_line(str(exc))}{_where_local(exc)}.", _is_memory_error(exc)


def _where_local(exc: BaseException) -> str:
    return _innermost([(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(exc.__traceback__)])


def resume_hint(cfg: Any) -> str:
    """The last complete checkpoint and how to resume from it."""
    from verl.utils import checkpoint as ckpt

    t = cfg.trainer
    root = Path(t.default_local_dir)
    try:
        step = ckpt.latest_step(root)
    except (RuntimeError, ValueError, OSError) as e:
        return f"The checkpoint pointer is unusable ({e})."
    how = ("run the same command again to resume from it (trainer.resume_mode=auto)" if t.resume_mode == "auto"
           else f"run the same command again with trainer.resume_mode=auto (now {t.resume_mode}) to resume from it")
    if step is None:
        return (f"No complete checkpoint in {root} yet: a new run starts from step 0 (trainer.save_freq=N saves "
                "every N steps).")
    return f"Last complete checkpoint: step {step} ({ckpt.step_dir(root, step)}); {how}."


def memory_keys(cfg: Any) -> str:
    """The keys that lower a worker's peak memory, with their values now."""
    arr = cfg.actor_rollout_ref
    a, r = arr.actor, arr.rollout
    keys = []
    if a.use_dynamic_bsz:
        keys.append(f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu (now {a.ppo_max_token_len_per_gpu})")
    else:
        keys.append(f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu (now {a.ppo_micro_batch_size_per_gpu}; or "
                    "actor_rollout_ref.actor.use_dynamic_bsz=true with a token budget, "
                    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu)")
    if not arr.model.enable_gradient_checkpointing:
        keys.append("actor_rollout_ref.model.enable_gradient_checkpointing=true")
    keys.append(f"data.max_response_length (now {cfg.data.max_response_length})")
    keys.append(f"actor_rollout_ref.rollout.kv_cache_space_gb (now {r.kv_cache_space_gb:g})")
    if a.fsdp_config.param_dtype in ("fp32", "auto") and _native_bf16(cfg.trainer.device):
        keys.append("PRECISION bf16 (actor_rollout_ref.actor.fsdp_config.param_dtype=bf16; this machine computes "
                    "bf16 natively)")
    return "To lower memory: " + ", ".join(keys) + "."


def _native_bf16(device: str) -> bool:
    try:
        import torch

        from verl.workers.fsdp_utils import cpu_has_native_bf16

        if device in ("cuda", "auto") and torch.cuda.is_available():
            return True
        return cpu_has_native_bf16()
    except Exception:  # advice only: never fail the report
        return False


def explain(exc: BaseException, cfg: Any | None = None) -> str:
    """The paragraph (lines joined by newlines) for `exc`."""
    first, memory = what_happened(exc)
    lines = [f"training failed: {first}"]
    if cfg is not None:
        lines.append(resume_hint(cfg))
        if memory:
            lines.append(memory_keys(cfg))
    run = console.current()
    if run is not None:
        lines.append(f"Full report and traceback: {run.path}")
    return "\n".join(lines)


def report_failure(exc: BaseException, cfg: Any | None = None) -> str:
    """Raw exception -> the run log; the paragraph -> the console. Returns the paragraph."""
    progress.abort()
    raw = "".join(traceback.format_exception(exc))  # for a Ray error: its report and the remote traceback
    logger.error("training failed:\n%s", _ANSI.sub("", raw).rstrip(), extra=console.FILE_ONLY)
    try:
        text = explain(exc, cfg)
    except Exception:  # a bug here must not hide the original failure
        logger.exception("failure report failed", extra=console.FILE_ONLY)
        text = f"training failed: {type(exc).__name__}: {_one_line(str(exc))}"
    console.console_write(text)
    logger.info("%s", text, extra=console.FILE_ONLY)
    return text
