"""Fault injection for the reliability tests: `fault_point(name, step)` SIGKILLs the trainer where a test asks.

`ZEROSEARCH_FAULT=<name>[@<step>]` (unset in normal runs: then every call is a dict lookup and returns) names one
point; when a `fault_point` with that name (and that step, when one is given) is reached, the process SIGKILLs the
driver and then itself, so a point inside a worker (mid-update, mid-save) kills the trainer there too, with
the worker's work cut where it stands. The driver's pid reaches the workers as `ZEROSEARCH_FAULT_DRIVER`
(`worker_env()`, set by `RayWorkerGroup`). `ZEROSEARCH_FAULT_TARGET=worker` kills only the calling worker
process (a Ray worker dying under a live driver).

Points: `rollout` (driver, after the rollout of a step), `update_actor` (worker, inside the actor update; the step
from the batch's `global_steps`), `save_checkpoint` (worker, after the sharded state is written and before the HF
export: a partial step directory), `after_save` (driver, after the `latest` pointer is written, before the step's
validation and its metrics' line), `validate` (driver, after the generations of a validation and before its metrics
are logged).
"""

from __future__ import annotations

import os
import signal

ENV = "ZEROSEARCH_FAULT"
ENV_DRIVER = "ZEROSEARCH_FAULT_DRIVER"
ENV_TARGET = "ZEROSEARCH_FAULT_TARGET"


def _matches(spec: str, name: str, step: int | None) -> bool:
    want, _, at = spec.partition("@")
    if want != name:
        return False
    return not at or (step is not None and int(at) == int(step))


def fault_point(name: str, step: int | None = None) -> None:
    """SIGKILL the driver and this process if `ZEROSEARCH_FAULT` names this point (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec or not _matches(spec, name, step):
        return
    driver = os.environ.get(ENV_DRIVER)
    if os.environ.get(ENV_TARGET) != "worker" and driver and int(driver) != os.getpid():
        try:
            os.kill(int(driver), signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def worker_env() -> dict[str, str]:
    """What a worker process needs to reach a fault point (empty when no fault is asked for)."""
    if not os.environ.get(ENV):
        return {}
    env = {ENV: os.environ[ENV], ENV_DRIVER: os.environ.get(ENV_DRIVER, str(os.getpid()))}
    if os.environ.get(ENV_TARGET):
        env[ENV_TARGET] = os.environ[ENV_TARGET]
    return env
