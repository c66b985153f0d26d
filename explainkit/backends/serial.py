"""The serial backend: one process, every sample in order. The reference for all other backends."""

from __future__ import annotations

from explainkit.analyzers.base import RunContext
from explainkit.backends.base import Backend
from explainkit.backends.plan import Outcome, RunPlan, map_shard

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """Run in this process."""

    name = "serial"

    def run(self, plan: RunPlan, ctx: RunContext) -> Outcome:
        """Map the plan's samples (every sample, or a round's) in sorted-id order."""
        states, timings = map_shard(plan, ctx, plan.sample_indices())
        return Outcome(states, timings, True, {"name": self.name, "workers": 1})
