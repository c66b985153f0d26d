"""Execution backends: ``serial`` (reference), ``torchrun`` (torch.distributed) and ``ray`` (Ray Data)."""

from explainkit.backends import ray, serial, torchrun
from explainkit.backends.base import Backend, get_backend, list_backends, register_backend
from explainkit.backends.plan import Outcome, RunPlan, guard, label_map, map_shard, merge_states, shard_indices

__all__ = [
    "Backend",
    "Outcome",
    "RunPlan",
    "get_backend",
    "guard",
    "label_map",
    "list_backends",
    "map_shard",
    "merge_states",
    "ray",
    "register_backend",
    "serial",
    "shard_indices",
    "torchrun",
]
