"""The Ray backend (extra ``explainkit[ray]``): Ray Data ``map_batches`` over stateful actors.

Each actor loads the model once (re-reading the model file with the trust decision the user already
made, or unpickling an in-memory module) and maps the batches Ray gives it; the driver merges the
returned states. Connect to a cluster with ``RAY_ADDRESS`` (or an already initialised Ray); without
one a local Ray instance with ``workers`` CPUs is started.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from explainkit.analyzers.base import RunContext
from explainkit.backends.base import Backend
from explainkit.backends.plan import Outcome, RunPlan, map_shard, merge_states
from explainkit.errors import ConfigError
from explainkit.options import Option

__all__ = ["RayBackend"]


class _MapActor:
    """A Ray Data callable class: holds the plan (model loaded once) and maps index batches."""

    def __init__(self, blob: bytes) -> None:
        import torch

        torch.set_num_threads(1)
        self.plan, self.ctx = pickle.loads(blob)
        self.plan.progress = False
        for a in self.plan.analyzers:
            a.prepare(self.ctx)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states, timings = map_shard(self.plan, self.ctx, batch["index"])
        return {"first": batch["index"][:1], "blob": np.array([pickle.dumps((states, timings))], dtype=object)}


class RayBackend(Backend):
    """Data-parallel over Ray actors.

    Parameters
    ----------
    workers : int
        Number of actors (each loads the model once).
    gpus_per_worker : float
        GPUs per actor (0 for CPU).
    cpus_per_worker : float
        CPUs per actor.
    address : str, optional
        A running Ray cluster to join (``"auto"``, ``"ray://head:10001"``); default ``$RAY_ADDRESS``,
        else a local Ray instance sized for the workers is started (and stopped afterwards). On a
        cluster, the probe folder and the output folder must be reachable at the same path from
        every node (a shared filesystem); the model travels with the task.
    """

    name = "ray"
    options: ClassVar[Mapping[str, Option]] = {
        "workers": Option("int", low=1, help="Ray actors (each loads the model once)"),
        "gpus_per_worker": Option("float", low=0, help="GPUs per actor (0: CPU)"),
        "cpus_per_worker": Option("float", low=0, low_open=True, help="CPUs per actor"),
        "address": Option("str", help="Ray cluster to join ('auto', 'ray://head:10001'); default $RAY_ADDRESS, "
                                      "else a local Ray"),
    }

    def __init__(self, workers: int = 2, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                 address: str | None = None) -> None:
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.address = address

    def run(self, plan: RunPlan, ctx: RunContext) -> Outcome:
        """Map batches of sample indices on actors; merge the states in index order."""
        try:
            import ray
            import ray.data
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'explainkit[ray]'") from None
        import torch

        started = False
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(num_cpus=max(1, int(self.workers * self.cpus_per_worker)), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            started = True
        try:
            device = torch.device("cuda") if self.gpus_per_worker > 0 else torch.device("cpu")
            import dataclasses

            blob = pickle.dumps((dataclasses.replace(plan, progress=False), dataclasses.replace(ctx, device=device)))
            samples = plan.sample_indices()
            ds = ray.data.from_items([{"index": int(i)} for i in samples],
                                     override_num_blocks=max(1, min(len(samples), self.workers * 4)))
            out = ds.map_batches(_MapActor, fn_constructor_kwargs={"blob": blob}, batch_size=ctx.batch_size,
                                 batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.workers),
                                 num_gpus=self.gpus_per_worker, num_cpus=self.cpus_per_worker)
            rows = sorted(out.iter_rows(), key=lambda r: int(r["first"]))
            parts = [pickle.loads(r["blob"]) for r in rows]
        finally:
            if started:
                ray.shutdown()
        merged = merge_states(plan, [p[0] for p in parts])
        timings: dict[str, Any] = {}
        for _, t in parts:
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
        return Outcome(merged, timings, True, {"name": self.name, "workers": self.workers,
                                               "gpus_per_worker": self.gpus_per_worker})
