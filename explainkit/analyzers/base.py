"""The analyzer contract: declared parameters, validate → prepare, then map → merge → finalize over batches.

An analyzer

* stores its keyword parameters unchanged in ``__init__`` (no validation, no work), so
  :meth:`Analyzer.get_params` is an exact provenance record, and declares each of them once in
  ``options`` (type, range or choices, help; the default is the ``__init__`` default);
* declares ``requires``: handle capabilities (``module_hooks``, ``gradients``, ``dynamic_batch``)
  and data needs (``labels``, ``concepts``, ``masks``);
* is checked before the first model pass: :meth:`Analyzer.check_params` (the declared types and
  ranges, for every analyzer of the run), then :meth:`Analyzer.validate` (rules across parameters
  and against the model and data; no side effects), then :meth:`Analyzer.prepare` (fits state from
  the run, e.g. prototype adapters or layer poolers, into attributes ending in ``_``);
* turns each batch into a partial state with :meth:`Analyzer.map`; states combine with an
  associative, commutative :meth:`Analyzer.merge`; :meth:`Analyzer.finalize` turns the merged
  state into a :class:`Section` (a JSON-ready dict plus image assets and findings).

The probe set therefore never has to fit in memory, and any execution backend that can map
batches and merge states reproduces the serial result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from explainkit.cache import ActivationCache
from explainkit.data.probe import ProbeSet
from explainkit.errors import CapabilityError
from explainkit.loading.handle import ModelHandle
from explainkit.options import Option, bind_options, check_values
from explainkit.report.section import Finding, Section

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

    def load_images(self, indices: Sequence[int]) -> list[Image.Image]:
        """Original images by probe-set index."""
        return [self.data.load_image(int(i)) for i in indices]


def _key_int(key: object) -> int:
    if isinstance(key, int | np.integer):
        return int(key) & (2**63 - 1)
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")


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
    """Base class of all analyzers (see the module docstring for the contract).

    Declaring parameters
    --------------------
    Every ``__init__`` parameter is declared once in the class attribute ``options``, a mapping
    parameter name → :class:`~explainkit.options.Option` (type, range or choices, help). The default
    is the ``__init__`` default: leave ``Option.default`` out. A class whose ``__init__`` has an
    undeclared parameter (or declares one it does not have) raises ``TypeError`` when it is defined.

    ``Option(type, *, choices=(), low=None, high=None, low_open=False, high_open=False, many=0,
    or_one=False, help="")`` with ``type`` one of ``"int"``, ``"float"`` (finite), ``"bool"``,
    ``"str"`` (non-empty), ``"choice"`` (one of ``choices``; a callable returning them, such as a
    registry's ``list_*``, is evaluated when needed), ``"mapping"`` (a table with string keys,
    e.g. per-method parameters; check its values in :meth:`validate`), ``"file"``, ``"dir"``,
    ``"class"``, ``"date"``. ``many=True``: a list of such values (``many=2``: a list of lists);
    ``or_one=True`` also accepts one value instead of a list. A ``None`` default makes ``None``
    ("not set") an allowed value.

    The runner checks every value before the first model pass (:meth:`check_params`): a bad value
    gets one message naming the parameter, the value and what is allowed. On the command line,
    ``--analyzer NAME:k=v,k2=a|b`` reads each value by its declared type (``many`` options stay
    lists, even with one element), and ``explainkit analyzers --params NAME`` prints the table.

    Examples
    --------
    >>> from typing import ClassVar
    >>> from explainkit.options import Option
    >>> class Toy(Analyzer):
    ...     name = "toy"
    ...     options: ClassVar[dict[str, Option]] = {
    ...         "threshold": Option("float", low=0, high=1, help="score above which a unit counts"),
    ...         "layers": Option("str", many=True, or_one=True, help="layers to read (default: the run's)"),
    ...         "mode": Option("choice", choices=("mean", "max"), help="spatial pooling"),
    ...     }
    ...
    ...     def __init__(self, threshold: float = 0.5, layers: str | list[str] | None = None,
    ...                  mode: str = "mean") -> None:
    ...         self.threshold = threshold
    ...         self.layers = layers
    ...         self.mode = mode
    >>> Toy(threshold=2.0, mode="median").check_params()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    explainkit.errors.ConfigError: toy: threshold must be >= 0 and <= 1, not 2.0; mode must be one of 'mean', ...
    """

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
    #: The declared parameters (defaults filled from ``__init__`` when the class is defined).
    options: ClassVar[Mapping[str, Option]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "check" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}.check(): the step was split into validate(ctx) (no side effects) "
                            "and prepare(ctx) (fits state); rename it")
        cls.options = bind_options(cls.options, cls.__init__, cls.__qualname__)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters and their current values (sklearn convention)."""
        return {p: _jsonable(getattr(self, p)) for p in self.options}

    def check_params(self) -> None:
        """Check every parameter against its declaration (no side effects).

        Raises
        ------
        ConfigError
            One message per bad value, naming the parameter, the value and what is allowed.
        """
        check_values(self.name or type(self).__name__, self.options, {p: getattr(self, p) for p in self.options})

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

    def validate(self, ctx: RunContext) -> None:
        """Rules across parameters and against the run's model and data, after :meth:`check_params`.

        No side effects (nothing is fitted or cached); raise :class:`~explainkit.errors.ConfigError`
        or :class:`~explainkit.errors.CapabilityError`. The default checks nothing more.
        """

    def prepare(self, ctx: RunContext) -> None:
        """Fit what :meth:`map` needs from the run (attributes ending in ``_``), after every analyzer validated.

        Deterministic: every worker of a distributed run prepares the same. The default fits nothing.
        """

    def captures(self, ctx: RunContext) -> dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
        """Layers whose outputs this analyzer reads from the runner's own forward pass (after :meth:`prepare`).

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
        parameters (after :meth:`prepare`) its map output depends on; runs with a cache then reuse
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
