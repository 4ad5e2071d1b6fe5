"""Single controller: the driver creates Ray worker groups and dispatches method calls to them."""

from verl.single_controller.dist import Worker, init_dist, resolve_device, set_torch_threads
from verl.single_controller.ray_worker_group import RayWorkerGroup, reduce_metrics

__all__ = ["RayWorkerGroup", "Worker", "init_dist", "reduce_metrics", "resolve_device", "set_torch_threads"]
