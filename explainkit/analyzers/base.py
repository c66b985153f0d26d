"""The analyzer contract: parameters in the constructor, map → merge → finalize over batches.

An analyzer

* stores its keyword parameters unchanged in ``__init__`` (no validation, no work), so
  :meth:`Analyzer.get_params` is an exact provenance record;
* declares ``requires``: handle capabilities (``module_hooks``, ``gradients``, ``dynamic_batch``)
  and data needs (``labels``, ``concepts``, ``masks``);
* validates parameters against the run in :meth:`Analyzer.check` before anything runs;
* turns each batch into a partial state with :meth:`Analyzer.map`; states combine with an
  associative, commutative :meth:`Analyzer.merge`; :meth:`Analyzer.finalize` turns the merged
  state into a :class:`Section` (a JSON-ready dict plus image assets and findings).

The probe set therefore never has to fit in memory, and any execution backend that can map
batches and merge states reproduces the serial result.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from explainkit.cache import ActivationCache
from explainkit.datasets.probe import ProbeSet
from explainkit.errors import CapabilityError
from explainkit.loading.handle import ModelHandle

__all__ = ["Analyzer", "Batch", "Finding", "RecordState", "RunContext", "Section"]

#: Data requirements an analyzer may declare next to handle capabilities.
DATA_REQUIREMENTS = ("labels", "concepts", "masks", "images")


@dataclass
class Batch:
    """One batch of probe images as analyzers see it.

    Attributes
    ----------
    indices : ndarray
        (B,) positions in the probe set.
    ids : list of str
        (B,) stable sample ids (relative paths).
    inputs : torch.Tensor
        (B, 3, H, W) preprocessed model inputs on the run's device.
    images : list of PIL.Image.Image
        The B original RGB images at source resolution.
    labels : torch.Tensor
        (B,) int64 class labels, -1 when unknown (CPU).
    concepts : ndarray or None
        (B, C) bool concept rows.
    output : Any
        The model output for ``inputs`` (no gradients), as the model returns it.
    logits : torch.Tensor
        (B, K) logits selected from ``output``.
    captured : dict of str to dict of str to torch.Tensor
        Analyzer name → layer → the layer's output during that same forward pass, detached and
        passed through the transform the analyzer gave in :meth:`Analyzer.captures` (empty for
        analyzers that capture nothing).
    """

    indices: np.ndarray
    ids: list[str]
    inputs: torch.Tensor
    images: list[Image.Image]
    labels: torch.Tensor
    concepts: np.ndarray | None
    output: Any
    logits: torch.Tensor
    captured: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RunContext:
    """Everything an analyzer may read during a run (read-only by convention).

    ``layer`` is the run-wide default target layer (``--layer``) for analyzers not given one;
    ``cache`` (when set) stores the map states of analyzers that opt in (:meth:`Analyzer.map_cache_key`).
    """

    handle: ModelHandle
    data: ProbeSet
    device: torch.device
    seed: int = 0
    batch_size: int = 32
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    cache: ActivationCache | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Model class names (falls back to the probe set's)."""
        return self.handle.class_names or self.data.class_names or ()

    def rng(self, *keys: object) -> np.random.Generator:
        """A NumPy generator derived from the run seed and ``keys`` (stable across runs)."""
        return np.random.default_rng([self.seed, *(_key_int(k) for k in keys)])

    def torch_generator(self, *keys: object) -> torch.Generator:
        """A CPU torch generator derived from the run seed and ``keys``."""
        g = torch.Generator()
        g.manual_seed(int(self.rng(*keys).integers(0, 2**62)))
        return g

    def load_images(self, indices: Sequence[int]) -> list[Image.Image]:
        """Original images by probe-set index."""
        return [self.data.load_image(int(i)) for i in indices]


def _key_int(key: object) -> int:
    if isinstance(key, int | np.integer):
        return int(key) & (2**63 - 1)
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")


@dataclass
class Finding:
    """Something a reviewer should see first (shown in the report summary).

    Attributes
    ----------
    severity : str
        ``"info"``, ``"warning"`` or ``"error"``.
    message : str
        One sentence, with numbers.
    analyzer : str
        Who found it.
    evidence : dict
        Numbers backing the message.
    """

    severity: str
    message: str
    analyzer: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"severity": self.severity, "message": self.message, "analyzer": self.analyzer,
                "evidence": self.evidence}


@dataclass
class Section:
    """An analyzer's result: a JSON section, image assets and findings.

    Attributes
    ----------
    analyzer : str
        Registry name.
    title : str
        Human title.
    params : dict
        The analyzer's parameters (``get_params()``).
    summary : dict
        Headline numbers (shown in the report summary).
    data : dict
        Everything else (JSON-ready; numbers say their units and direction).
    findings : list of Finding
        Reviewer-facing conclusions.
    assets : dict of str to str
        Asset id → data URI, referenced from ``data`` by id.
    """

    analyzer: str
    title: str
    params: dict[str, Any]
    summary: dict[str, Any]
    data: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    assets: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready section (assets are stored report-wide, not here)."""
        return {"analyzer": self.analyzer, "title": self.title, "params": self.params,
                "summary": self.summary, "data": self.data,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass
class RecordState:
    """A mergeable state of per-sample records keyed by probe-set index.

    ``merge`` is a union (associative and commutative); :meth:`stacked` returns the arrays in
    index order, so the result does not depend on how the data was partitioned.
    """

    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_batch(cls, indices: np.ndarray, **columns: Sequence[Any]) -> RecordState:
        """One record per index with the given columns (each of length B)."""
        return cls({int(i): {k: v[j] for k, v in columns.items()} for j, i in enumerate(indices)})

    def merge(self, other: RecordState) -> RecordState:
        """Union of two disjoint states."""
        overlap = self.records.keys() & other.records.keys()
        if overlap:
            raise ValueError(f"states overlap on {len(overlap)} samples; shards must be disjoint")
        return RecordState({**self.records, **other.records})

    def indices(self) -> np.ndarray:
        """Sorted probe-set indices."""
        return np.array(sorted(self.records), dtype=np.int64)

    def column(self, key: str) -> list[Any]:
        """Column ``key`` as a list in index order (any objects)."""
        return [self.records[i][key] for i in sorted(self.records)]

    def stacked(self, key: str) -> np.ndarray:
        """Column ``key`` as an array in index order (numbers or arrays of equal shape)."""
        return np.asarray(self.column(key))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every column stacked (rows in index order) plus ``"__index__"`` (N,): for the map cache.

        Raises
        ------
        TypeError
            When a column holds something other than numbers or equal-shape numeric arrays.
        """
        idx = self.indices()
        out = {"__index__": idx}
        keys = next(iter(self.records.values())).keys() if self.records else ()
        for key in keys:
            arr = self.stacked(key)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"column {key!r} is not numeric ({arr.dtype}); it cannot be cached")
            out[key] = arr
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RecordState:
        """Inverse of :meth:`to_arrays`."""
        cols = {k: v for k, v in arrays.items() if k != "__index__"}
        return cls.from_batch(arrays["__index__"], **cols)


class Analyzer:
    """Base class of all analyzers (see the module docstring for the contract)."""

    #: Registry name (lowercase snake case).
    name: ClassVar[str] = ""
    #: Human title for reports.
    title: ClassVar[str] = ""
    #: One-line description for ``explainkit analyzers``.
    summary: ClassVar[str] = ""
    #: Capabilities and data the analyzer needs.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Whether ``analyze`` runs it when no analyzer is named (and its requirements are met).
    run_by_default: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters and their current values (sklearn convention)."""
        sig = inspect.signature(type(self).__init__)
        return {
            p: _jsonable(getattr(self, p))
            for p in sig.parameters
            if p != "self" and sig.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                              inspect.Parameter.VAR_KEYWORD)
        }

    def missing_requirements(self, handle: ModelHandle, data: ProbeSet | None) -> list[str]:
        """Requirements not met by ``handle`` and ``data`` (empty when the analyzer can run)."""
        have = set(handle.capabilities)
        if data is not None:
            have.add("images")
            if data.has_labels:
                have.add("labels")
            if data.concepts is not None:
                have.add("concepts")
            if data.mask_names():
                have.add("masks")
        return sorted(self.requires - have)

    def check(self, ctx: RunContext) -> None:
        """Validate parameters against the run; raise :class:`~explainkit.errors.ConfigError`."""

    def captures(self, ctx: RunContext) -> dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
        """Layers whose outputs this analyzer reads from the runner's own forward pass (after :meth:`check`).

        Returns
        -------
        dict
            Layer name → ``(module, transform)``; the transform reduces the detached output before
            it is kept (e.g. spatial pooling to (B, D)). The results arrive in
            ``batch.captured[self.name][layer]``, so the analyzer needs no forward pass of its own.
            Default: nothing.
        """
        return {}

    def init_state(self, ctx: RunContext) -> Any:
        """The empty state."""
        return RecordState()

    def map(self, ctx: RunContext, batch: Batch) -> Any:
        """The state of one batch."""
        raise NotImplementedError

    def map_cache_key(self, ctx: RunContext) -> dict[str, Any] | None:
        """What :meth:`map` depends on besides the model, data, preprocessing and seed, or ``None``.

        An analyzer whose ``map`` returns a :class:`RecordState` of numeric columns may return the
        parameters (after :meth:`check`) its map output depends on; runs with a cache then reuse
        per-batch states, so changing only a later threshold skips the forward passes. ``None``
        (the default) means never cached.
        """
        return None

    def merge(self, a: Any, b: Any) -> Any:
        """Combine two states (associative, commutative)."""
        return a.merge(b)

    def finalize(self, ctx: RunContext, state: Any) -> Section:
        """Turn the merged state into a :class:`Section`."""
        raise NotImplementedError

    def section(self, **kwargs: Any) -> Section:
        """A :class:`Section` pre-filled with this analyzer's name, title and parameters."""
        return Section(analyzer=self.name, title=self.title or self.name, params=self.get_params(), **kwargs)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def require(analyzer: Analyzer, handle: ModelHandle, data: ProbeSet | None, available: Sequence[str]) -> None:
    """Raise :class:`CapabilityError` when ``analyzer`` cannot run, naming analyzers that can."""
    missing = analyzer.missing_requirements(handle, data)
    if missing:
        hint = f"; analyzers that can run here: {', '.join(available)}" if available else ""
        raise CapabilityError(
            f"analyzer {analyzer.name!r} needs {', '.join(missing)}, which this "
            f"{handle.format.value} model / probe set does not provide{hint}"
        )
