"""The analyzer contract: declared parameters, validate → prepare, then map → merge → finalize over batches.

An analyzer

* stores its keyword parameters unchanged in ``__init__`` (no validation, no work), so
  :meth:`Analyzer.get_params` is an exact provenance record, and declares each of them once in
  ``options`` (type, range or choices, help; the default is the ``__init__`` default);
* declares ``requires``: handle capabilities (``module_hooks``, ``gradients``, ``dynamic_batch``)
  and data needs (``labels``, ``concepts``, ``masks``, ``label_maps``, ``multilabels``), and
  ``tasks``: the model outputs it reads (``classification``: (B, K) softmax logits, the default;
  ``multilabel``: (B, K) sigmoid logits; ``segmentation``: (B, K, H, W) dense scores);
* is checked before the first model pass: :meth:`Analyzer.check_params` (the declared types and
  ranges, for every analyzer of the run), then :meth:`Analyzer.validate` (rules across parameters
  and against the model and data; no side effects), then :meth:`Analyzer.prepare` (fits state from
  the run, e.g. prototype adapters or layer poolers, into attributes ending in ``_``);
* turns each batch into a partial state with :meth:`Analyzer.map`; states combine with an
  associative, commutative :meth:`Analyzer.merge`; :meth:`Analyzer.finalize` turns the merged
  state into a :class:`Section` (a JSON-ready dict plus image assets and findings).

Two optional hooks let analyzers share model passes and sample what is expensive:

* :meth:`Analyzer.pass_request` declares what the runner's **shared pass** of every batch should
  record (layer outputs, their gradients, the input gradient, for the predicted class or the
  label): the runner runs one forward and one backward per batch for every analyzer together and
  hands the results over in :attr:`Batch.passes`, so two analyzers that explain the same class
  never pay for the same pass twice;
* :meth:`Analyzer.next_round` asks, after the probe set was mapped and merged, for one more
  **round** over a subset of images (e.g. the next stage of a metric sample whose confidence
  interval is still too wide); the backend maps those images (sharded as usual) with
  :attr:`RunContext.round` set, and the states merge into the first. Rounds repeat until no
  analyzer asks for more; :attr:`RunContext.budget` (``--time-budget``) lets analyzers plan
  their sample sizes to fit the time left.

The probe set therefore never has to fit in memory, and any execution backend that can map
batches and merge states reproduces the serial result.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from explainkit.adapters.activations import LOGITS, Pooler, pool_outputs
from explainkit.adapters.targets import take_rows
from explainkit.cache import ActivationCache
from explainkit.data.probe import TASKS, ProbeSet
from explainkit.errors import CapabilityError
from explainkit.loading.handle import ModelHandle
from explainkit.options import Option, bind_options, check_values
from explainkit.report.section import Finding, Section

__all__ = ["Analyzer", "Batch", "Finding", "PassRequest", "PassResult", "RecordState", "Round", "RoundRequest",
           "RunContext", "Section", "TimeBudget", "layer_request"]

#: Data requirements an analyzer may declare next to handle capabilities.
DATA_REQUIREMENTS = ("labels", "concepts", "masks", "images", "volumes", "label_maps", "multilabels")
#: Classes a shared pass can explain: the predicted class, or the label where known (else predicted).
PASS_TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class PassRequest:
    """What an analyzer wants recorded in the shared model pass of every batch.

    Attributes
    ----------
    layers : tuple of str
        Canonical layer names (:func:`explainkit.adapters.resolve_layers`) whose outputs are recorded,
        as the layer returns them (spatial maps, tokens, units): each analyzer pools or maps them
        itself, so one recording serves every analyzer of the run. ``"layer:key"`` records one entry
        of a layer that returns a mapping, a tuple or a namedtuple (:func:`explainkit.hooks.capture_layers`).
    gradients : bool or tuple of str
        Also the gradient of the summed target logits with respect to layer outputs: ``True`` for
        every layer in ``layers``, or the layers (a subset of ``layers``) that need one; stored as
        that tuple. The backward pass then reaches only as deep as the first of them.
    input_gradient : bool
        Also the gradient with respect to the (preprocessed) input.
    target : {"predicted", "label"}
        The logit differentiated per image: the predicted class, or the label where the probe set
        has one (else the predicted class).
    """

    layers: tuple[str, ...] = ()
    gradients: bool | tuple[str, ...] = False
    input_gradient: bool = False
    target: str = "predicted"

    def __post_init__(self) -> None:
        if self.target not in PASS_TARGETS:
            raise ValueError(f"pass target must be one of {PASS_TARGETS}, not {self.target!r}")
        layers = tuple(dict.fromkeys(self.layers))
        grads = layers if self.gradients is True else () if self.gradients is False else tuple(self.gradients)
        if set(grads) - set(layers):
            raise ValueError(f"gradients asked for layers not recorded: {', '.join(sorted(set(grads) - set(layers)))}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "gradients", tuple(name for name in layers if name in grads))

    def union(self, other: PassRequest) -> PassRequest:
        """Both requests in one pass (same target)."""
        if other.target != self.target:
            raise ValueError("requests for different targets need separate passes")
        return PassRequest((*self.layers, *other.layers), (*self.gradients, *other.gradients),  # type: ignore[misc]
                           self.input_gradient or other.input_gradient, self.target)

    @property
    def needs_backward(self) -> bool:
        """Whether the pass differentiates anything."""
        return self.input_gradient or bool(self.gradients)


def layer_request(layers: Iterable[str], *, gradients: bool = False, target: str = "predicted") -> PassRequest | None:
    """The shared-pass request that records ``layers`` (``None`` when only the logits, which need no record, remain).

    Parameters
    ----------
    layers : iterable of str
        Canonical layer names, possibly :data:`~explainkit.adapters.activations.LOGITS`.
    gradients : bool
        Also their gradients toward ``target``.
    target : str
        Which class is differentiated (see :class:`PassRequest`).
    """
    hooked = tuple(name for name in layers if name != LOGITS)
    return PassRequest(hooked, gradients, target=target) if hooked else None


@dataclass
class PassResult:
    """What the shared pass recorded for one target (tensors on the run's device, detached).

    Attributes
    ----------
    classes : torch.Tensor
        (B,) int64 class whose logit was differentiated.
    activations : dict of str to torch.Tensor
        Layer → its output as the layer returned it (e.g. (B, K, h, w) or (B, T, D)).
    gradients : dict of str to torch.Tensor
        Layer → d(sum of the B target logits)/d(output), same shape (only with ``gradients``).
    input_gradient : torch.Tensor or None
        (B, C, H, W) d(sum of target logits)/d(input) (only with ``input_gradient``).
    """

    classes: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    input_gradient: torch.Tensor | None = None


@dataclass(frozen=True)
class RoundRequest:
    """One analyzer's request for another round over some images.

    Attributes
    ----------
    indices : tuple of int
        Probe-set indices to map again.
    payload : Any
        What :meth:`Analyzer.map` needs to know in that round (picklable; e.g. the stage number).
    """

    indices: tuple[int, ...]
    payload: Any = None


@dataclass(frozen=True)
class Round:
    """A follow-up round: its number (1 = the first after the main pass) and every analyzer's request."""

    number: int
    requests: Mapping[str, RoundRequest]


@dataclass(frozen=True)
class TimeBudget:
    """The wall-clock budget of a run (``--time-budget``), from the run's start (``time.time()``).

    Wall-clock time (not a monotonic clock) so that workers of a distributed run agree.
    """

    seconds: float
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.started

    def remaining(self) -> float:
        """Seconds left (negative when overrun)."""
        return self.seconds - self.elapsed()


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
    images : list of PIL.Image.Image or list of ndarray
        The B original samples: RGB images at source resolution, or (C, D, H, W) float32 volumes
        (``ctx.data.kind == "volumes"``; ``inputs`` is then (B, C, D, H, W)).
    labels : torch.Tensor
        (B,) int64 class labels, -1 when unknown (CPU).
    concepts : ndarray or None
        (B, C) bool concept rows.
    output : Any
        The model output for ``inputs`` (no gradients), as the model returns it.
    logits : torch.Tensor
        (B, K) logits selected from ``output``; (B, K, H, W) class scores when the run's task is
        ``segmentation``.
    passes : dict of str to PassResult
        The shared pass per target (``"predicted"``, ``"label"``) when analyzers requested one
        (:meth:`Analyzer.pass_request`).
    """

    indices: np.ndarray
    ids: list[str]
    inputs: torch.Tensor
    images: list[Image.Image]
    labels: torch.Tensor
    concepts: np.ndarray | None
    output: Any
    logits: torch.Tensor
    passes: dict[str, PassResult] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def layer_values(self, poolers: Mapping[str, Pooler], *, spatial: bool = False, target: str = "predicted"
                     ) -> dict[str, np.ndarray]:
        """Pooled values (or unit maps) of the layers the shared pass recorded for ``target`` (:func:`layer_request`).

        Parameters
        ----------
        poolers : mapping of str to Pooler
            Layer → pooler (:data:`~explainkit.adapters.activations.LOGITS` reads :attr:`logits`).
        spatial : bool
            (B, D, h, w) unit maps instead of (B, D) pooled values.
        target : str
            Which pass.

        Returns
        -------
        dict of str to ndarray
            Layer → (B, D) or (B, D, h, w) float32.
        """
        recorded = self.passes[target].activations if target in self.passes else {}
        return pool_outputs(recorded, poolers, self.logits, spatial=spatial)

    def select(self, rows: Sequence[int]) -> Batch:
        """The batch restricted to ``rows`` (positions in this batch), the shared passes included."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Batch(
            indices=self.indices[idx.numpy()], ids=[self.ids[int(j)] for j in idx],
            inputs=self.inputs[idx.to(self.inputs.device)], images=[self.images[int(j)] for j in idx],
            labels=self.labels[idx], concepts=None if self.concepts is None else self.concepts[idx.numpy()],
            output=take_rows(self.output, idx), logits=self.logits[idx.to(self.logits.device)],
            passes={t: PassResult(p.classes[idx.to(p.classes.device)],
                                  {k: take_rows(v, idx) for k, v in p.activations.items()},
                                  {k: take_rows(v, idx) for k, v in p.gradients.items()},
                                  None if p.input_gradient is None else take_rows(p.input_gradient, idx))
                    for t, p in self.passes.items()},
        )


@dataclass
class RunContext:
    """Everything an analyzer may read during a run (read-only by convention).

    ``layer`` is the run-wide default target layer (``--layer``) for analyzers not given one;
    ``cache`` (when set) stores the map states of analyzers that opt in (:meth:`Analyzer.map_cache_key`);
    ``budget`` is the run's time budget (``None``: unlimited); ``round`` is set while a follow-up
    round maps (:meth:`Analyzer.next_round`); ``autocast`` names a lower-precision dtype for model
    passes on CUDA (``"bfloat16"``, ``"float16"``; statistics stay float32); ``pass_rows`` is how
    many rows an extra forward pass (without gradients) should hold at most (bounded memory on the
    CPU; the batch size elsewhere), ``grad_rows`` the same for a pass that backpropagates to the input;
    ``task`` is what the model's outputs mean (one of :data:`explainkit.data.probe.TASKS`, from the
    probe set's layout or ``--task``).
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
    budget: TimeBudget | None = None
    round: Round | None = None
    autocast: str | None = None
    pass_rows: int | None = None
    grad_rows: int | None = None
    task: str = "classification"

    @property
    def rows(self) -> int:
        """Rows per extra forward pass without gradients (``pass_rows``, else the batch size)."""
        return int(self.pass_rows or self.batch_size)

    @property
    def gradient_rows(self) -> int:
        """Rows per extra pass with a whole autograd graph (``grad_rows``, else the batch size)."""
        return int(self.grad_rows or self.batch_size)

    def round_request(self, name: str) -> RoundRequest | None:
        """Analyzer ``name``'s request in the current round (``None`` in the main pass)."""
        return None if self.round is None else self.round.requests.get(name)

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
    #: The tasks (:data:`explainkit.data.probe.TASKS`) whose model outputs the analyzer reads.
    tasks: ClassVar[frozenset[str]] = frozenset({"classification"})
    #: Whether ``analyze`` runs it when no analyzer is named (and its requirements are met).
    run_by_default: ClassVar[bool] = False
    #: The kinds of probe sample it reads (``ProbeSet.kind``: ``"images"``; ``VolumeSet.kind``:
    #: ``"volumes"``, (C, D, H, W) arrays fed as stored); on other data it is skipped with that reason.
    inputs: ClassVar[frozenset[str]] = frozenset({"images"})
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
        wrong_kind = []
        if data is not None:
            have.add(data.kind)
            if data.has_labels:
                have.add("labels")
            if data.concepts is not None:
                have.add("concepts")
            if data.mask_names():
                have.add("masks")
            if data.has_label_maps:
                have.add("label_maps")
            if data.multilabels is not None:
                have.add("multilabels")
            if data.kind not in self.inputs:
                wrong_kind = [" or ".join(sorted(self.inputs))]
        return sorted(self.requires - have) + wrong_kind

    def task_problem(self, task: str) -> str | None:
        """Why the analyzer cannot read the outputs of a ``task`` model, or ``None`` when it can."""
        if task in self.tasks:
            return None
        kinds = ", ".join(t for t in TASKS if t in self.tasks)
        return (f"{self.name} reads the outputs of {kinds} models; this is a {task} model "
                f"({_OUTPUTS[task]})")

    def validate(self, ctx: RunContext) -> None:
        """Rules across parameters and against the run's model and data, after :meth:`check_params`.

        No side effects (nothing is fitted or cached); raise :class:`~explainkit.errors.ConfigError`
        or :class:`~explainkit.errors.CapabilityError`. The default checks nothing more.
        """

    def prepare(self, ctx: RunContext) -> None:
        """Fit what :meth:`map` needs from the run (attributes ending in ``_``), after every analyzer validated.

        Deterministic: every worker of a distributed run prepares the same. The default fits nothing.
        """

    def init_state(self, ctx: RunContext) -> Any:
        """The empty state."""
        return RecordState()

    def map(self, ctx: RunContext, batch: Batch) -> Any:
        """The state of one batch."""
        raise NotImplementedError

    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """What the shared pass of every batch should record for this analyzer (after :meth:`prepare`).

        The runner merges the requests of all analyzers per target and runs one forward (and, when
        anything is differentiated, one backward) per batch; :meth:`map` finds the results in
        ``batch.passes[request.target]``. ``None`` (the default): nothing beyond the batch output.
        """
        return None

    def next_round(self, ctx: RunContext, state: Any, number: int, allowance_s: float | None
                   ) -> RoundRequest | None:
        """After the main pass (and each round), the images to map once more, or ``None`` when done.

        Called on every worker's copy of the merged state, so it must be deterministic in ``state``
        (and, with a time budget, in ``allowance_s``). In the round, :meth:`map` sees
        ``ctx.round_request(self.name)`` and returns a state that merges into ``state``.

        Parameters
        ----------
        ctx : RunContext
            The run.
        state : Any
            The merged state so far.
        number : int
            The round to plan (1, 2, ...).
        allowance_s : float or None
            Seconds this analyzer may spend on the round (``None``: no time budget).
        """
        return None

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


_OUTPUTS = {"classification": "(B, K) softmax logits", "multilabel": "(B, K) sigmoid logits, one per label",
            "segmentation": "(B, K, H, W) class scores per pixel"}


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
