"""Per-batch map states reused across runs: the activation cache of the execution plan.

A batch's state is stored under a key over everything it depends on — the model (file sha256 or
state-dict fingerprint), the probe set's manifest hash, the batch's sample ids, preprocessing,
seed, device type, library versions and the analyzer's own :meth:`~explainkit.analyzers.base.
Analyzer.map_cache_key` — so a rerun that changes only a threshold skips the model entirely
for batches every analyzer has cached, while any change the state depends on misses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from explainkit._version import __version__
from explainkit.analyzers.base import Analyzer, RecordState, RunContext
from explainkit.cache import cache_key, module_fingerprint

if TYPE_CHECKING:
    from explainkit.backends.plan import RunPlan

__all__ = ["MapCache"]

_log = logging.getLogger(__name__)


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
        self.row_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
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

    def get(self, name: str, ids: Sequence[str], indices: np.ndarray) -> RecordState | None:
        """The cached state of analyzer ``name`` for the batch ``ids`` (probe ``indices``), or ``None``.

        An entry that does not describe this batch (other indices, a column without one row per
        image, a non-numeric column, rows shaped unlike the run's other states) is a miss with a
        warning; the caller recomputes it and :meth:`put` replaces it.
        """
        if name not in self.parts:
            return None
        key = self._key(name, ids)
        arrays = self.store.get(key)
        if arrays is None:
            return None
        problem = self._problem(name, arrays, np.asarray(indices))
        if problem:
            _log.warning("ignoring cache entry %s: %s; it will be recomputed and replaced", self.store.path(key),
                         problem)
            return None
        state = RecordState.from_arrays(arrays)
        self._remember(name, arrays)
        return state

    def _problem(self, name: str, arrays: dict[str, np.ndarray], indices: np.ndarray) -> str | None:
        index = arrays.get("__index__")
        if index is None or index.shape != indices.shape or not np.array_equal(np.sort(index), np.sort(indices)):
            return "it holds other samples than the batch"
        known = self.row_shapes.get(name)
        for col, arr in arrays.items():
            if arr.dtype.kind not in "biuf" or arr.ndim == 0 or len(arr) != len(indices):
                return f"column {col!r} is not one numeric row per sample"
            if known is not None and known.get(col, arr.shape[1:]) != arr.shape[1:]:
                return f"column {col!r} has rows of shape {arr.shape[1:]}, not {known[col]}"
        if known is not None and set(known) != set(arrays):
            return "its columns differ from the run's other states"
        return None

    def _remember(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self.row_shapes.setdefault(name, {col: arr.shape[1:] for col, arr in arrays.items()})

    def put(self, name: str, ids: Sequence[str], state: RecordState) -> None:
        """Store the state of analyzer ``name`` for the batch ``ids`` (a no-op if it does not opt in)."""
        if name in self.parts:
            arrays = state.to_arrays()
            self._remember(name, arrays)
            self.store.put(self._key(name, ids), arrays)
