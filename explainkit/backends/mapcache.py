"""Per-batch map states reused across runs: the activation cache of the execution plan.

A batch's state is stored under a key over everything it depends on — the model (file sha256 or
state-dict fingerprint), the probe set's manifest hash, the batch's sample ids, preprocessing,
seed, device type, library versions and the analyzer's own :meth:`~explainkit.analyzers.base.
Analyzer.map_cache_key` — so a rerun that changes only a threshold skips the model entirely
for batches every analyzer has cached, while any change the state depends on misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from explainkit._version import __version__
from explainkit.analyzers.base import Analyzer, RecordState, RunContext
from explainkit.cache import cache_key, module_fingerprint

if TYPE_CHECKING:
    from explainkit.backends.plan import RunPlan

__all__ = ["MapCache"]


class MapCache:
    """Lookup and store of per-batch states for the analyzers of a plan that opt in.

    Parameters
    ----------
    plan : RunPlan
        The run (model, probe set, analyzers).
    ctx : RunContext
        Its context; nothing is cached when ``ctx.cache`` is ``None``.
    """

    def __init__(self, plan: RunPlan, ctx: RunContext) -> None:
        self.store = ctx.cache
        self.parts: dict[str, dict[str, Any]] = {}
        if self.store is None:
            return
        handle = plan.handle
        base = {
            "model": handle.sha256 or module_fingerprint(handle.module),
            "data": plan.probe.manifest_hash(),
            "preprocessing": handle.require_preprocessing().to_dict(),
            "seed": ctx.seed, "device": ctx.device.type,
            "versions": {"explainkit": __version__, "torch": torch.__version__},
        }
        for a in plan.analyzers:
            own = a.map_cache_key(ctx)
            if own is not None:
                self.parts[a.name] = {**base, "analyzer": a.name, "params": own}

    def covers(self, analyzers: Sequence[Analyzer]) -> bool:
        """Whether every analyzer of the run is cacheable (a full hit then skips the model)."""
        return bool(analyzers) and all(a.name in self.parts for a in analyzers)

    def _key(self, name: str, ids: Sequence[str]) -> str:
        return cache_key(**self.parts[name], ids=list(ids))

    def get(self, name: str, ids: Sequence[str]) -> RecordState | None:
        """The cached state of analyzer ``name`` for the batch ``ids``, or ``None``."""
        if name not in self.parts:
            return None
        arrays = self.store.get(self._key(name, ids))
        return None if arrays is None else RecordState.from_arrays(arrays)

    def put(self, name: str, ids: Sequence[str], state: RecordState) -> None:
        """Store the state of analyzer ``name`` for the batch ``ids`` (a no-op if it does not opt in)."""
        if name in self.parts:
            self.store.put(self._key(name, ids), state.to_arrays())
