"""The check-kind contract, its registry, and what every kind shares (context, sample, budget, target).

A kind is a class with

* ``options``: its own policy keys (:class:`~explainkit.options.Option`), validated by the
  policy parser, and :meth:`CheckKind.validate_options` for rules across keys;
* :meth:`CheckKind.prepare`: checks against the data before anything runs (raise
  :class:`~explainkit.errors.ConfigError` / :class:`~explainkit.errors.DataError`: exit code 2);
* :meth:`CheckKind.measure`: runs the check and returns a :class:`Measurement` (an effect with
  its CI, a one-sided p-value, n and a standard error for the minimal detectable effect). The
  decision (PASS / FAIL / INCONCLUSIVE), the multiplicity correction and the exit code are the
  runner's, identical for every kind.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from explainkit.analyzers.base import RunContext
from explainkit.errors import CapabilityError, ConfigError
from explainkit.options import UNSET, Option
from explainkit.registry import Registry
from explainkit.stats import bootstrap_ci, wilcoxon_signed_rank

if TYPE_CHECKING:
    from explainkit.gate.policy import CheckSpec, GateDefaults

__all__ = ["CHECK_KINDS", "CheckContext", "CheckKind", "Measurement", "concept_name", "get_check_kind",
           "list_check_kinds", "paired_measurement", "register_check_kind"]

_log = logging.getLogger(__name__)

#: Asymptotic relative efficiency of the Wilcoxon signed-rank test against the t-test (normal data).
WILCOXON_ARE = 3.0 / math.pi


def _check(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, CheckKind)) or not name or cls.name != name:
        raise ValueError(f"check kind {name!r} must be a CheckKind subclass with that name")


#: Every check kind: the built-ins (in this order), then kinds registered in this process.
CHECK_KINDS: Registry[type[CheckKind]] = Registry("check kind", check=_check, builtins={
    "attribution_mass": "explainkit.gate.kinds.attribution_mass:AttributionMass",
    "insertion": "explainkit.gate.kinds.insertion:Insertion",
    "randomisation": "explainkit.gate.kinds.randomisation:Randomisation",
    "removal": "explainkit.gate.kinds.removal:Removal",
    "slice_gap": "explainkit.gate.kinds.slice_gap:SliceGap",
    "slice_shift": "explainkit.gate.kinds.slice_shift:SliceShift",
    "transform": "explainkit.gate.kinds.transform:Transform",
})


def register_check_kind(cls: type[CheckKind]) -> type[CheckKind]:
    """Class decorator adding a check kind; duplicate names raise."""
    return CHECK_KINDS.register(cls.name, cls)


def list_check_kinds() -> list[str]:
    """Registered kind names, in registration order."""
    return CHECK_KINDS.names()


def get_check_kind(name: str) -> type[CheckKind]:
    """The class of kind ``name``."""
    return CHECK_KINDS.get(name)


@dataclass
class Measurement:
    """What a check measured, before the decision.

    Attributes
    ----------
    effect : float
        Point estimate, oriented so that larger means more reliance on the suspected cue.
    ci : tuple of float
        Confidence interval of ``effect`` (level: the policy's ``ci``).
    p : float
        One-sided p-value of "effect > 0" (NaN when no test was possible).
    n : int
        Independent units (images) behind the estimate.
    n_planned : int
        Units the check meant to use (max_images or fewer eligible).
    se : float
        Standard error scale of the test: the minimal detectable effect is
        ``(z(1 - alpha') + z(power)) * se``.
    unit : str
        Unit of ``effect``.
    truncated : bool
        The time budget stopped the check before ``n_planned`` units.
    test : dict
        Name and statistics of the test.
    metrics : dict
        More reported numbers (``metric`` dicts), e.g. ``raw_effect`` and ``control_effect``.
    details : dict
        Kind-specific JSON (per-image values, chosen slice, ...).
    examples : list of dict
        Example images for the HTML report (asset ids and captions).
    assets : dict of str to str
        Asset id → data URI.
    notes : list of str
        Caveats to show next to the result.
    """

    effect: float
    ci: tuple[float, float]
    p: float
    n: int
    n_planned: int
    se: float
    unit: str
    truncated: bool = False
    test: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    assets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckContext:
    """Everything a kind reads while it runs.

    Attributes
    ----------
    spec : CheckSpec
        The check.
    defaults : GateDefaults
        Gate-wide settings (alpha, ci, n_resamples, min_images, ...).
    run : RunContext
        Handle, probe set, device, seed (the check's) and batch size.
    progress : bool or None
        Progress bars on stderr.
    """

    spec: CheckSpec
    defaults: GateDefaults
    run: RunContext
    progress: bool | None = None
    started: float = field(default_factory=time.perf_counter)

    def rng(self, *keys: object) -> np.random.Generator:
        """A generator derived from the check's seed, its id and ``keys`` (stable across runs)."""
        return self.run.rng("gate", self.spec.id, *keys)

    def seed(self, *keys: object) -> int:
        """An integer seed derived like :meth:`rng`."""
        return int(self.rng(*keys).integers(0, 2**31 - 1))

    def over_budget(self) -> bool:
        """Whether the check's time budget is spent."""
        budget = self.spec.time_budget_s
        return budget is not None and time.perf_counter() - self.started > budget

    def sample(self, eligible: np.ndarray) -> np.ndarray:
        """A seeded random order of ``eligible`` probe indices, cut to ``max_images``.

        Processing in this order means that a sample cut short by the time budget is still a
        random sample (only a smaller one).
        """
        eligible = np.asarray(eligible, dtype=np.int64)
        order = self.rng("sample").permutation(eligible.size)
        return eligible[order][: self.spec.max_images]

    def batches(self, indices: np.ndarray, per_batch: int) -> Iterator[tuple[np.ndarray, list]]:
        """``(indices, images)`` chunks until the indices or the time budget run out."""
        for chunk, images in self.run.data.iter_batches(max(1, per_batch), indices):
            yield chunk, images
            if self.over_budget():
                _log.warning("check %s: time budget of %.3g s spent", self.spec.id, self.spec.time_budget_s)
                return

    def target_index(self) -> int:
        """The policy's ``target_class`` as an output index.

        Raises
        ------
        ConfigError
            Unknown class name, or an index beyond the model's class names.
        """
        target = self.spec.target_class
        names = self.run.handle.class_names or self.run.data.class_names
        if target is None:
            raise ConfigError(f"check {self.spec.id!r}: target_class is required")
        if isinstance(target, int):
            if names is not None and target >= len(names):
                raise ConfigError(f"check {self.spec.id!r}: target_class {target} is out of range "
                                  f"({len(names)} classes)")
            return target
        if names is None or target not in names:
            known = f"known classes: {', '.join(names)}" if names else "the model has no class names; use an index"
            raise ConfigError(f"check {self.spec.id!r}: unknown target_class {target!r} ({known})")
        return list(names).index(target)

    def target_name(self) -> str | None:
        """Name of the target class, when known."""
        if self.spec.target_class is None:
            return None
        names = self.run.handle.class_names or self.run.data.class_names
        idx = self.target_index()
        return names[idx] if names is not None else None


def paired_measurement(cc: CheckContext, values: np.ndarray, *, unit: str, n_planned: int, truncated: bool,
                       null: float = 0.0) -> Measurement:
    """Effect, CI, one-sided Wilcoxon p-value and standard error of per-image paired differences.

    Parameters
    ----------
    cc : CheckContext
        For the CI level, the bootstrap resamples and the seed.
    values : ndarray
        (n,) one difference per image (positive: reliance on the cue).
    unit : str
        Unit of the values.
    n_planned : int
        Images the check meant to use.
    truncated : bool
        Whether the time budget cut the sample.
    null : float
        The value the test compares with: the p-value is that of "values exceed ``null``"
        (0 for differences; a threshold for per-image scores such as correlations).

    Returns
    -------
    Measurement
        Mean with a percentile-bootstrap CI over images, the one-sided ("greater") Wilcoxon
        signed-rank p-value of ``values - null``, and ``se = sd / sqrt(n * 3/pi)`` (the Wilcoxon
        test's asymptotic efficiency) for the minimal detectable effect (an excess over ``null``).
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = int(values.size)
    test = wilcoxon_signed_rank(values - null, alternative="greater")
    ci = bootstrap_ci(values, confidence=cc.defaults.ci, n_resamples=cc.defaults.n_resamples,
                      seed=cc.seed("bootstrap")) if n else (float("nan"), float("nan"))
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    se = sd / math.sqrt(n * WILCOXON_ARE) if n > 1 else float("nan")
    return Measurement(
        effect=float(values.mean()) if n else float("nan"), ci=ci, p=test.p, n=n, n_planned=n_planned, se=se,
        unit=unit, truncated=truncated,
        test={"name": f"Wilcoxon signed-rank, one-sided (effect > {null:g})", **test.to_dict()},
    )


class CheckKind:
    """Base class of check kinds (see the module docstring)."""

    #: Registry name (the policy's ``kind``).
    name: ClassVar[str] = ""
    #: Human title.
    title: ClassVar[str] = ""
    #: Severity when the policy does not give one (interventional kinds gate, evidence kinds warn).
    default_severity: ClassVar[str] = "warning"
    #: Whether ``target_class`` is mandatory.
    needs_target: ClassVar[bool] = False
    #: Handle capabilities needed; a handle without them makes the check ERROR (it cannot run).
    requires: ClassVar[frozenset[str]] = frozenset()
    #: The kind's own policy keys.
    options: ClassVar[Mapping[str, Option]] = {}
    #: The tasks (:data:`explainkit.data.probe.TASKS`) whose model outputs the kind measures.
    tasks: ClassVar[frozenset[str]] = frozenset({"classification"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unset = [k for k, o in cls.options.items() if o.default is UNSET]
        if unset:
            raise TypeError(f"check kind {cls.__qualname__}: option(s) {', '.join(unset)} need a default (policy keys "
                            "have no signature to take it from)")

    def __init__(self, spec: CheckSpec, defaults: GateDefaults) -> None:
        self.spec = spec
        self.defaults = defaults

    @classmethod
    def default_tau(cls, options: Mapping[str, Any]) -> float:  # pragma: no cover - abstract
        """Materiality threshold when the policy gives none."""
        raise NotImplementedError

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Rules across the kind's keys; raise :class:`ConfigError` with a one-line message."""

    def prepare(self, cc: CheckContext) -> None:
        """Check the data before anything runs (ConfigError / DataError → exit code 2)."""

    def missing_capabilities(self, cc: CheckContext) -> list[str]:
        """Capabilities the handle lacks for this kind."""
        return sorted(self.requires - cc.run.handle.capabilities)

    def ensure_runnable(self, cc: CheckContext) -> None:
        """Raise :class:`CapabilityError` (the check becomes ERROR) when the handle lacks a capability."""
        missing = self.missing_capabilities(cc)
        if missing:
            raise CapabilityError(f"kind {self.name!r} needs {', '.join(missing)}, which this "
                                  f"{cc.run.handle.format.value} model does not provide")

    def measure(self, cc: CheckContext) -> Measurement:  # pragma: no cover - abstract
        """Run the check."""
        raise NotImplementedError

    def provenance(self, cc: CheckContext) -> dict[str, Any]:
        """Inputs of the check (data manifest; kinds add artifact hashes)."""
        return {"data": {"root": str(cc.run.data.root), "n_images": len(cc.run.data),
                         "manifest_sha256": cc.run.data.manifest_hash()}}


def concept_name(options: Mapping[str, Any]) -> str | None:
    """The artifact's concept name: ``concept`` or the artifact file's stem."""
    if options.get("concept"):
        return str(options["concept"])
    artifact = options.get("artifact")
    return artifact.stem if artifact is not None else None

