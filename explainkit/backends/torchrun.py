r"""The ``torchrun`` backend: ``torch.distributed`` ranks map disjoint shards; states are all-gathered.

Run the ordinary command under ``torchrun``::

    torchrun --standalone --nproc_per_node=4 -m explainkit analyze model.safetensors --data probe/ \
        --backend torchrun --device cuda

Every rank loads the model, validates the run and maps the samples ``rank::world`` (sorted ids; no
padding, no dropping). States are gathered with ``all_gather_object`` and merged in rank order on
every rank; rank 0 writes the report. CUDA ranks use ``cuda:LOCAL_RANK`` and NCCL, CPU ranks gloo.
The process group is created once per process, by the first round, and destroyed at exit: creating
it again for each round (the main pass, then follow-up rounds) reuses the rendezvous store's keys,
so a rank could read a peer's address from the group just destroyed and fail to connect.
``torch.distributed`` has no authentication: use it on trusted networks only.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.distributed as dist

from explainkit.analyzers.base import RunContext
from explainkit.backends.base import Backend
from explainkit.backends.plan import Outcome, RunPlan, map_shard, merge_states, shard_indices
from explainkit.errors import ConfigError
from explainkit.options import Option

__all__ = ["TorchrunBackend"]


class TorchrunBackend(Backend):
    """Data-parallel over ``torch.distributed`` ranks (started by ``torchrun``).

    Parameters
    ----------
    timeout_s : float
        Collective timeout.
    """

    name = "torchrun"
    options: ClassVar[Mapping[str, Option]] = {
        "timeout_s": Option("float", low=0, low_open=True, help="collective timeout in seconds"),
    }

    def __init__(self, timeout_s: float = 1800.0) -> None:
        self.timeout_s = timeout_s

    def output_role(self) -> tuple[str | None, bool]:
        """One staging folder for every rank, named by the torchrun run id; rank 0 swaps it in."""
        run_id = os.environ.get("TORCHELASTIC_RUN_ID") or \
            f"{os.environ.get('MASTER_ADDR', 'local')}-{os.environ.get('MASTER_PORT', '0')}"
        return "torchrun-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id), \
            os.environ.get("RANK", "0") == "0"

    def run(self, plan: RunPlan, ctx: RunContext) -> Outcome:
        """Map this rank's shard, all-gather the states, merge them in rank order."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ConfigError("--backend torchrun must be started by torchrun (RANK/WORLD_SIZE are not set)")
        if not dist.is_initialized():
            import datetime as dt

            dist.init_process_group("nccl" if ctx.device.type == "cuda" else "gloo",
                                    timeout=dt.timedelta(seconds=self.timeout_s))
            atexit.register(_destroy)
        rank, world = dist.get_rank(), dist.get_world_size()
        if ctx.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank))
            ctx = dataclasses.replace(ctx, device=torch.device("cuda", local))
            torch.cuda.set_device(ctx.device)
        samples = plan.sample_indices()
        states, timings = map_shard(plan, ctx, samples[shard_indices(len(samples), rank, world)],
                                    desc=f"{plan.phase}[rank {rank}]")
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (states, timings))
        merged = merge_states(plan, [g[0] for g in gathered])
        total = {k: max(g[1].get(k, 0.0) for g in gathered) for k in timings}
        return Outcome(merged, total, rank == 0, {"name": self.name, "workers": world})


def _destroy() -> None:
    """Destroy the process group this backend created (at exit, once every round is done)."""
    if dist.is_initialized():
        dist.destroy_process_group()
