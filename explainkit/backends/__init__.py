"""Execution backends: ``serial`` (reference), ``torchrun`` (torch.distributed) and ``ray`` (Ray Data).

The registry (:data:`~explainkit.backends.base.BACKENDS`) imports a backend's module when it is
first asked for, so Ray and ``torch.distributed`` stay unimported until used.
"""

from explainkit.backends.base import BACKENDS, Backend, get_backend, list_backends, register_backend
from explainkit.backends.plan import Outcome, RunPlan, guard, label_map, map_shard, merge_states, shard_indices

__all__ = [
    "BACKENDS",
    "Backend",
    "Outcome",
    "RunPlan",
    "get_backend",
    "guard",
    "label_map",
    "list_backends",
    "map_shard",
    "merge_states",
    "register_backend",
    "shard_indices",
]
