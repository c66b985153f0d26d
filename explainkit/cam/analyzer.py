"""Analyzers ``gradcam`` (class-activation maps) and ``captum`` (input-level attributions).

Both explain every probe image with several methods and evaluate the maps the same way:

* per image: pointing game and energy share for every mask folder of the probe set (e.g. the
  synthetic world's ``object`` and the planted ``stamp``);
* on a **sequential sample** (:mod:`explainkit.stats.sequential`): deletion / insertion AUC,
  Average Drop and Increase in Confidence, and the "better than random" test (the method's
  insertion − deletion against ``n_random`` random maps of the same spatial structure, one-sided
  Wilcoxon, Holm across methods); ROAD on a second, smaller sequential sample. Images enter in a
  seeded hash order of their ids; the first stage (``min_metric_images``) is measured in the main
  pass, later stages (doubling) in follow-up rounds until the 95 % CI half-width of every method's
  insertion − deletion (and of its advantage over random maps) is at most ``precision``, the
  sample reaches ``metric_images``, or the time budget is spent; ``data.sampling`` says n and why;
* once, in ``finalize``: the model-parameter randomisation sanity check on the first images of the
  same order, growing from ``min_sanity_images`` until every method's verdict is decided.

Explanation maps come from the runner's shared pass (:meth:`Analyzer.pass_request`): ``gradcam``
asks for its layers' outputs and gradients, ``captum`` for the input gradient (Saliency), both for
the same class, so one forward and one backward per batch serve both (and INVERT).

``gradcam`` needs module hooks and gradients. ``captum`` needs gradients only (Occlusion not even
those), so TorchScript models still get explanations and the same metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.adapters import SpatialLayout, default_layer, resolve_layers
from explainkit.analyzers.base import (
    Analyzer,
    Batch,
    Finding,
    PassRequest,
    RecordState,
    RoundRequest,
    RunContext,
    Section,
)
from explainkit.analyzers.metric import metric
from explainkit.cam import baseline, metrics, render
from explainkit.cam.api import VOLUME_KINDS, CamResult, explain, plan_methods
from explainkit.cam.engine import CamRun
from explainkit.cam.localisation import MIN_HIT_RATE, RULE, chance_levels, failure_findings, localisation_row
from explainkit.cam.methods import METHODS, CamMethod, get_method, method_choices
from explainkit.cam.sanity import parameter_randomization
from explainkit.errors import CapabilityError, ConfigError
from explainkit.options import Option
from explainkit.samples import write_samples
from explainkit.stats import adjust_pvalues, bootstrap_ci, wilson_interval
from explainkit.stats.sequential import SampleLog, SampleSchedule, half_width, priority_order

__all__ = ["CaptumAttributions", "GradCam"]

#: name → (label, unit, higher_is_better) of the per-image faithfulness metrics.
METRICS: dict[str, tuple[str, str, bool]] = {
    "deletion": ("deletion AUC", "probability AUC", False),
    "insertion": ("insertion AUC", "probability AUC", True),
    "faithfulness": ("insertion − deletion", "probability AUC", True),
    "average_drop": ("Average Drop", "fraction", False),
    "increase": ("Increase in Confidence", "fraction", True),
    "road_morf": ("ROAD MoRF", "probability", False),
    "road_lerf": ("ROAD LeRF", "probability", True),
    "road_combined": ("ROAD combined", "probability", True),
}
#: Salt of the sample order: both analyzers measure the same images.
ORDER_SALT = "attribution-metrics"


# -- typed intermediate results --------------------------------------------------------------------
@dataclass(frozen=True)
class PointingHit:
    """Pointing game of one map on one mask: hit (1/0, NaN without the mask) and energy share inside."""

    hit: float
    energy: float


@dataclass
class Example:
    """An example image: the model's view (H, W, 3) and every method's map, uint8."""

    view: np.ndarray
    maps: dict[str, np.ndarray]


@dataclass
class ImageRecord:
    """What the main pass keeps of every image."""

    cls: int
    prob: float
    label: int
    pointing: dict[str, dict[str, PointingHit]]
    example: Example | None = None
    chance: dict[str, tuple[float, float]] = field(default_factory=dict)  # mask → chance hit, chance energy


@dataclass(frozen=True)
class MethodScores:
    """Faithfulness of one method's map of one image."""

    deletion: float
    insertion: float
    average_drop: float
    increase: float

    @property
    def faithfulness(self) -> float:
        """Insertion − deletion AUC."""
        return self.insertion - self.deletion


@dataclass
class FaithRecord:
    """One image of the metric sample: every method's scores and the random maps' insertion − deletion."""

    methods: dict[str, MethodScores]
    random: dict[tuple[int, int], np.ndarray]


@dataclass(frozen=True)
class RoadScores:
    """ROAD of one method's map of one image (mean over the levels)."""

    morf: float
    lerf: float

    @property
    def combined(self) -> float:
        """(LeRF − MoRF) / 2."""
        return (self.lerf - self.morf) / 2


@dataclass
class RoadRecord:
    """One image of the ROAD sample."""

    methods: dict[str, RoadScores]


@dataclass(frozen=True)
class Stage:
    """What a follow-up round measures: metric and ROAD sample positions ``[lo, hi)``."""

    faith: tuple[int, int] = (0, 0)
    road: tuple[int, int] = (0, 0)


@dataclass
class CamState:
    """Mergeable state: per-image records, the samples' records, map grids and measured costs.

    ``log`` holds the sampling decisions (:meth:`_AttributionAnalyzer.next_round` records them on
    the merged state; rounds bring none).
    """

    images: RecordState = field(default_factory=RecordState)
    faith: RecordState = field(default_factory=RecordState)
    road: RecordState = field(default_factory=RecordState)
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)
    cost: dict[str, tuple[float, int]] = field(default_factory=dict)
    log: dict[str, SampleLog] = field(default_factory=dict)

    def merge(self, other: CamState) -> CamState:
        """Union of the records, sums of the costs (associative, commutative)."""
        cost = dict(self.cost)
        for k, (s, n) in other.cost.items():
            s0, n0 = cost.get(k, (0.0, 0))
            cost[k] = (s0 + s, n0 + n)
        return CamState(self.images.merge(other.images), self.faith.merge(other.faith), self.road.merge(other.road),
                        {**other.grids, **self.grids}, cost, {**other.log, **self.log})

    def seconds_per_image(self, kind: str) -> float | None:
        """Measured seconds per sampled image of ``kind`` (``None`` before any)."""
        s, n = self.cost.get(kind, (0.0, 0))
        return s / n if n else None


@dataclass
class MethodSummary:
    """Everything the section reports about one method (turned into a dict once, at the end)."""

    name: str
    grid: tuple[int, int] | None
    metrics: dict[str, dict[str, Any]]
    pointing: dict[str, dict[str, Any]]
    vs_random: dict[str, Any] | None
    sanity: dict[str, Any] | None = None

    @property
    def sanity_failed(self) -> bool:
        """Whether the sanity check's verdict is FAIL."""
        return bool(self.sanity and self.sanity["verdict"] == "FAIL")

    @property
    def beats_random(self) -> bool | None:
        """Whether the random-map test is significant (``None`` when it did not run)."""
        return None if self.vs_random is None else bool(self.vs_random["significant"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON row."""
        method = get_method(self.name)
        return {"name": self.name, "title": method.title, "kind": method.kind,
                "grid": None if self.grid is None else list(self.grid), **self.metrics, "pointing": self.pointing,
                "vs_random": self.vs_random, "sanity": self.sanity}


# -- the analyzers --------------------------------------------------------------------------------
class _AttributionAnalyzer(Analyzer):
    """Shared machinery of ``gradcam`` and ``captum``; subclasses set names and default methods.

    Parameters
    ----------
    methods : sequence of str, optional
        Methods to run (default: the registered methods marked ``default`` of the analyzer's
        :attr:`method_kinds`).
    layer : str or sequence of str, optional
        Target layer(s) of CAM methods (default: the run's ``--layer``, else the model's default).
    target : {"predicted", "label"}
        Class explained per image.
    method_params : mapping, optional
        Method name → keyword parameters (e.g. ``{"scorecam": {"variant": "channel_softmax"}}``).
    metric_images : int
        Most images of the metric sample (deletion / insertion, Average Drop, random-map test).
    min_metric_images : int
        First stage of the metric sample (always measured).
    precision : float
        Target 95 % CI half-width of insertion − deletion (and of the advantage over random maps)
        of every method, in probability-AUC units; also of ROAD combined. 0: grow to the maximum.
    road_images : int
        Most images of the ROAD sample (a prefix of the metric sample's order).
    min_road_images : int
        First stage of the ROAD sample.
    steps : int
        Deletion / insertion steps.
    road_levels : sequence of float
        Fractions removed by ROAD.
    n_random : int
        Random maps per image for the "better than random" test (0 disables it, else at least 2).
    sanity : bool
        Run the parameter-randomisation sanity check.
    sanity_images : int
        Most images of the sanity check.
    min_sanity_images : int
        First stage of the sanity check (it grows while a verdict is INCONCLUSIVE).
    sanity_steps : int
        Cascade groups of the sanity check.
    sanity_threshold : float
        Spearman correlation regarded as "unchanged".
    n_examples : int
        Example images shown in the report (from the first metric stage; half of them with an
        artifact concept, if any).
    pointing_tolerance : float, optional
        Pointing-game radius in input pixels (default: 15 px at 224 px, scaled).
    min_hit_rate : float
        Least pointing-game hit rate of a method that localises a mask (not the artifact masks):
        the localisation table's verdict is ``fails`` when the hit rate's 95 % CI lies below
        ``max(min_hit_rate, chance)`` (:mod:`explainkit.cam.localisation`).
    batch_size : int, optional
        Rows per extra forward pass (default: the run's, bounded in memory on the CPU).
    n_resamples : int
        Bootstrap resamples for every CI.
    save_maps : bool
        Write every image's maps (uint8, input resolution) to ``<out>/samples/<name>/*.npz`` shards
        keyed by sample id (read them with :func:`explainkit.samples.read_samples`); only summaries
        go into the report. Nothing is written when the run has no output folder.
    grid : sequence of int, optional
        (h, w) patch grid of a token layer (ViT) when the model does not declare it and the token
        count is ambiguous (``grid=14|14`` on the command line).
    prefix_tokens : int, optional
        Tokens before the patch tokens (CLS, registers) of that layer; default 0 with ``grid``.
    layout : str
        How 4-D layer outputs are read: ``"auto"`` (decided from evidence, stopping when it is
        ambiguous, see :func:`explainkit.adapters.infer_layout`), ``"nchw"`` or ``"nhwc"``.
    """

    #: The CAM-method kinds whose ``default`` methods run when none are named.
    method_kinds: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, Option]] = {
        "methods": Option("choice", choices=method_choices, many=True,
                          help="methods to run (default: the analyzer's default methods)"),
        "layer": Option("str", many=True, or_one=True,
                        help="target layer(s) of CAM methods (default: the run's --layer, else the model's)"),
        "target": Option("choice", choices=("predicted", "label"), help="class explained per image"),
        "method_params": Option("mapping", help="method name → its parameters, e.g. {scorecam = {variant = ...}}"),
        "metric_images": Option("int", low=0, help="most images of the metric sample (deletion/insertion, "
                                                   "Average Drop, random-map test)"),
        "min_metric_images": Option("int", low=2, help="first stage of the metric sample"),
        "precision": Option("float", low=0, help="target 95% CI half-width of insertion − deletion (probability "
                                                 "AUC) and of ROAD combined; 0: grow to the maximum"),
        "road_images": Option("int", low=0, help="most images of the ROAD sample"),
        "min_road_images": Option("int", low=2, help="first stage of the ROAD sample"),
        "steps": Option("int", low=1, help="deletion / insertion steps"),
        "road_levels": Option("float", low=0, high=1, low_open=True, high_open=True, many=True,
                              help="fractions removed by ROAD"),
        "n_random": Option("int", low=0, help="random maps per image for the random-map test (0: off, else >= 2)"),
        "sanity": Option("bool", help="run the parameter-randomisation sanity check"),
        "sanity_images": Option("int", low=0, help="most images of the sanity check"),
        "min_sanity_images": Option("int", low=2, help="first stage of the sanity check"),
        "sanity_steps": Option("int", low=1, help="cascade groups of the sanity check"),
        "sanity_threshold": Option("float", low=-1, high=1, help="Spearman correlation regarded as unchanged"),
        "n_examples": Option("int", low=0, help="example images shown in the report"),
        "pointing_tolerance": Option("float", low=0, help="pointing-game radius in input pixels "
                                                          "(default: 15 px at 224 px, scaled)"),
        "min_hit_rate": Option("float", low=0, high=1,
                               help="least pointing-game hit rate of a localiser: a method fails a mask when its "
                                    "95% CI lies below max(this, chance)"),
        "batch_size": Option("int", low=1, help="rows per extra forward pass (default: the run's)"),
        "n_resamples": Option("int", low=100, help="bootstrap resamples for every CI"),
        "save_maps": Option("bool", help="write every image's maps to <out>/samples/<name>/"),
        "grid": Option("int", low=1, many=True, help="(h, w) patch grid of a token layer when the token count is "
                                                     "ambiguous, e.g. grid=14|14"),
        "prefix_tokens": Option("int", low=0, help="tokens before the patch tokens of that layer (with grid)"),
        "layout": Option("choice", choices=("auto", "nchw", "nhwc"),
                         help="channels first or last for 4-D layer outputs (auto: from evidence, never guessed)"),
    }

    def __init__(self, methods: Sequence[str] | None = None, layer: str | Sequence[str] | None = None,
                 target: str = "predicted", method_params: Mapping[str, Mapping[str, Any]] | None = None,
                 metric_images: int = 64, min_metric_images: int = 16, precision: float = 0.1,
                 road_images: int = 12, min_road_images: int = 4, steps: int = 8,
                 road_levels: Sequence[float] = (0.2, 0.5, 0.8), n_random: int = 4, sanity: bool = True,
                 sanity_images: int = 12, min_sanity_images: int = 6, sanity_steps: int = 3,
                 sanity_threshold: float = 0.5, n_examples: int = 6, pointing_tolerance: float | None = None,
                 min_hit_rate: float = MIN_HIT_RATE, batch_size: int | None = None, n_resamples: int = 1000,
                 save_maps: bool = True, grid: Sequence[int] | None = None, prefix_tokens: int | None = None,
                 layout: str = "auto") -> None:
        self.methods = methods
        self.layer = layer
        self.target = target
        self.method_params = method_params
        self.metric_images = metric_images
        self.min_metric_images = min_metric_images
        self.precision = precision
        self.road_images = road_images
        self.min_road_images = min_road_images
        self.steps = steps
        self.road_levels = road_levels
        self.n_random = n_random
        self.sanity = sanity
        self.sanity_images = sanity_images
        self.min_sanity_images = min_sanity_images
        self.sanity_steps = sanity_steps
        self.sanity_threshold = sanity_threshold
        self.n_examples = n_examples
        self.pointing_tolerance = pointing_tolerance
        self.min_hit_rate = min_hit_rate
        self.batch_size = batch_size
        self.n_resamples = n_resamples
        self.save_maps = save_maps
        self.grid = grid
        self.prefix_tokens = prefix_tokens
        self.layout = layout

    # -- parameters -------------------------------------------------------------------------
    @classmethod
    def default_methods(cls) -> list[str]:
        """The registered methods marked ``default`` whose kind is one of :attr:`method_kinds`."""
        return [name for name, m in METHODS.items() if m.default and m.kind in cls.method_kinds]

    def _plan(self) -> list[tuple[CamMethod, dict[str, Any]]]:
        return plan_methods(list(self.methods or self.default_methods()), self.method_params)

    def _methods(self) -> list[str]:
        return [m.name for m, _ in self._plan()]

    def _layer(self, ctx: RunContext) -> str | Sequence[str] | None:
        """Target layer(s): own parameter, else the run's, else the model's default (cached).

        ``None`` when only input-level methods run.
        """
        if not any(m.uses_layers for m, _ in self._plan()):
            return None
        layer = self.layer if self.layer is not None else ctx.layer
        if layer is not None:
            return layer
        cached = getattr(self, "default_layer_", None)
        if cached is None or cached[0] != id(ctx.handle.module):
            prep = ctx.handle.require_preprocessing()
            cached = (id(ctx.handle.module), default_layer(ctx.handle.module, tuple(prep.input_size), prep.channels))
            self.default_layer_ = cached
        return cached[1]

    def _layer_names(self, ctx: RunContext) -> list[str]:
        layer = self._layer(ctx)
        if layer is None:
            return []
        return list(resolve_layers(ctx.handle.module, [layer] if isinstance(layer, str) else list(layer)))

    def _rows(self, ctx: RunContext) -> int:
        """Rows per extra pass (the ``batch_size`` parameter, else the run's bounded rows).

        Input-level methods backpropagate through the whole model, so theirs are the run's gradient
        rows; other passes stop at the layer or need no gradients.
        """
        if self.batch_size:
            return int(self.batch_size)
        return ctx.gradient_rows if any(m.kind == "input" for m, _ in self._plan()) else ctx.rows

    def _schedules(self) -> dict[str, SampleSchedule]:
        target = float(self.precision) or None
        return {
            "metrics": SampleSchedule(int(self.min_metric_images), int(self.metric_images), target,
                                      "insertion − deletion AUC and its advantage over random maps, every method"),
            "road": SampleSchedule(int(self.min_road_images), int(self.road_images), target,
                                   "ROAD combined, every method"),
        }

    def _spatial_layout(self) -> str | SpatialLayout:
        """``layout``, or the token layout given by ``grid`` / ``prefix_tokens``."""
        if self.grid is None:
            return self.layout
        h, w = (int(v) for v in self.grid)
        return SpatialLayout("tokens", int(self.prefix_tokens or 0), (h, w))

    def validate(self, ctx: RunContext) -> None:
        """Methods and their parameters, the rules across parameters, capabilities, labels and layers."""
        plan = self._plan()
        if any(m.hooks for m, _ in plan) and not ctx.handle.module_hooks:
            raise CapabilityError(f"{self.name}: {', '.join(m.name for m, _ in plan if m.hooks)} need module hooks, "
                                  "which this model does not allow; use captum's input-level methods")
        image_only = [m.name for m, _ in plan if m.kind not in VOLUME_KINDS]
        if ctx.data.kind == "volumes" and image_only:
            raise ConfigError(f"{self.name}: {', '.join(image_only)} do not run on volumes (volume methods: the "
                              f"{', '.join(VOLUME_KINDS)} kinds)")
        if self.target == "label" and not ctx.data.has_labels:
            raise ConfigError(f"{self.name}: target='label' needs a labelled probe set")
        if self.n_random == 1:
            raise ConfigError(f"{self.name}: n_random must be 0 (off) or at least 2, not 1")
        if not self.road_levels:
            raise ConfigError(f"{self.name}: road_levels must list at least one fraction")
        if self.grid is not None and len(self.grid) != 2:
            raise ConfigError(f"{self.name}: grid must be two integers h|w, not {self.grid!r}")
        if self.prefix_tokens is not None and self.grid is None:
            raise ConfigError(f"{self.name}: prefix_tokens goes with grid=h|w")
        if self.grid is not None and self.layout != "auto":
            raise ConfigError(f"{self.name}: grid=h|w is a token layout; it cannot go with layout={self.layout}")
        layer = self.layer if self.layer is not None else ctx.layer
        if layer is not None and any(m.uses_layers for m, _ in plan):
            resolve_layers(ctx.handle.module, [layer] if isinstance(layer, str) else list(layer))

    def prepare(self, ctx: RunContext) -> None:
        """Find the target layer, the sample order and the example images.

        A model without a spatial layer fails here, before any batch; ``order_``, ``position_`` and
        ``examples_`` are set.
        """
        self._layer(ctx)
        n = len(ctx.data)
        self.order_ = priority_order(ctx.data.ids, ctx.seed, ORDER_SALT)
        self.position_ = np.empty(n, dtype=np.int64)
        self.position_[self.order_] = np.arange(n)
        flagged = np.zeros(n, dtype=bool)
        if ctx.data.concepts is not None:
            for name in ctx.data.artifact_concepts:
                flagged |= ctx.data.concepts[:, ctx.data.concept_index(name)]
        k = int(self.n_examples)
        pool = [int(i) for i in self.order_[: max(k, self._schedules()["metrics"].first(n))]]
        ex = [i for i in pool if flagged[i]][: (k + 1) // 2] if flagged.any() else []
        ex += [i for i in pool if i not in set(ex)][: k - len(ex)]
        self.examples_ = frozenset(ex)

    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """Layers' outputs and gradients (CAMs) and the input gradient (Saliency) for the explained class."""
        plan = self._plan()
        layers = tuple(self._layer_names(ctx))
        grads = any(m.uses_gradients for m, _ in plan)
        saliency = any(m.name == "saliency" for m, _ in plan) and ctx.handle.gradients
        if not layers and not saliency:
            return None
        return PassRequest(layers=layers, gradients=grads and bool(layers), input_gradient=saliency,
                           target=self.target)

    # -- maps ---------------------------------------------------------------------------------
    def _explain(self, ctx: RunContext, batch: Batch) -> CamResult:
        """Every method's maps for the batch, from the shared pass when there is one."""
        plan = self._plan()
        shared = batch.passes.get(self.target)
        if shared is not None:
            classes = shared.classes
        else:
            classes = batch.logits.detach().argmax(1).cpu()
            if self.target == "label":
                classes = torch.where(batch.labels >= 0, batch.labels, classes)
        run = CamRun.create(ctx.handle, batch.inputs, layer=self._layer(ctx), targets=classes.tolist(),
                            needs_layers=any(m.uses_layers for m, _ in plan), needs_hooks=any(m.hooks for m, _ in plan),
                            batch_size=self._rows(ctx),
                            seed=ctx.seed, layout=self._spatial_layout())
        run.amp = ctx.autocast
        if shared is not None:
            run.adopt(batch.output, classes, shared.activations, shared.gradients, shared.input_gradient)
        else:
            run.record(gradients=any(m.uses_gradients for m, _ in plan))
        return explain(run, plan, batch.inputs.device)

    # -- map ------------------------------------------------------------------------------------
    def init_state(self, ctx: RunContext) -> CamState:
        """The empty state."""
        return CamState()

    def map(self, ctx: RunContext, batch: Batch) -> CamState:
        """Maps and pointing game of every image; faithfulness and ROAD of the batch's sample images."""
        request = ctx.round_request(self.name)
        stage = request.payload if request is not None else self._first_stage(ctx)
        pos = self.position_[batch.indices]
        faith_rows = [j for j, p in enumerate(pos) if stage.faith[0] <= p < stage.faith[1]]
        road_rows = [j for j, p in enumerate(pos) if stage.road[0] <= p < stage.road[1]]
        main = request is None
        rows = list(range(len(batch))) if main else sorted(set(faith_rows) | set(road_rows))
        state = CamState()
        if not rows:
            return state
        res = self._explain(ctx, batch if main else batch.select(rows))
        local = {j: k for k, j in enumerate(rows)}
        classes = res.classes.cpu() if res.classes is not None else torch.zeros(len(rows), dtype=torch.long)
        if main:
            state.images = self._image_records(ctx, batch, res, classes)
            state.grids = {m: res.grid(m) for m in res.maps}
            if self.save_maps:
                write_samples(ctx.out_dir, self.name, batch.ids,
                              **{m: render.quantize(maps.cpu().numpy()) for m, maps in res.maps.items()})
        if faith_rows:
            t = time.perf_counter()
            state.faith = self._faith_records(ctx, batch, res, classes, faith_rows, [local[j] for j in faith_rows])
            state.cost["metrics"] = (time.perf_counter() - t, len(faith_rows))
        if road_rows:
            t = time.perf_counter()
            state.road = self._road_records(ctx, batch, res, classes, road_rows, [local[j] for j in road_rows])
            state.cost["road"] = (time.perf_counter() - t, len(road_rows))
        return state

    def _first_stage(self, ctx: RunContext) -> Stage:
        """The main pass's share of the metric and ROAD samples (none on volumes: see :data:`IMAGE_ONLY_METRICS`)."""
        if ctx.data.kind != "images":
            return Stage()
        n = len(ctx.data)
        return Stage((0, self._schedules()["metrics"].first(n)), (0, self._schedules()["road"].first(n)))

    def _image_records(self, ctx: RunContext, batch: Batch, res: CamResult, classes: torch.Tensor) -> RecordState:
        prep = ctx.handle.require_preprocessing()
        probs = torch.softmax(batch.logits.detach().float(), 1).cpu().gather(1, classes[:, None])[:, 0]
        pointing, chance = self._pointing(ctx, batch, res)
        records = []
        for j, i in enumerate(int(v) for v in batch.indices):
            example = None
            if i in self.examples_:
                example = Example(render.sample_view(batch.images[j], prep),
                                  {m: render.quantize(res.maps[m][j].cpu().numpy()) for m in res.maps})
            records.append(ImageRecord(int(classes[j]), float(probs[j]), int(batch.labels[j]),
                                       {m: {mask: PointingHit(float(v["hit"][j]), float(v["energy"][j]))
                                            for mask, v in per.items()} for m, per in pointing.items()},
                                       example, {mask: (float(h[j]), float(e[j])) for mask, (h, e) in chance.items()}))
        return RecordState.from_batch(batch.indices, rec=records)

    def _pointing(self, ctx: RunContext, batch: Batch, res: CamResult
                  ) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Pointing game per method and mask, and every mask's chance levels (:func:`chance_levels`), per image."""
        prep = ctx.handle.require_preprocessing()
        out: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {} for m in res.maps}
        chance = {}
        for mask_name in ctx.data.mask_names():
            masks = []
            for i in batch.indices:
                raw = ctx.data.mask(int(i), mask_name)
                masks.append(None if raw is None else prep.resize_mask(raw))
            for m, maps in res.maps.items():
                out[m][mask_name] = metrics.pointing_game(maps, masks, tolerance=self.pointing_tolerance)
            if res.maps:
                spatial = tuple(next(iter(res.maps.values())).shape[1:])
                chance[mask_name] = chance_levels(masks, metrics.pointing_tolerance(spatial, self.pointing_tolerance))
        return out, chance

    def _eval_run(self, ctx: RunContext, batch: Batch, classes: torch.Tensor, batch_rows: list[int],
                  res_rows: list[int]) -> CamRun:
        """A run over some batch images bound to their explained classes (for perturbed copies)."""
        x = batch.inputs[torch.as_tensor(batch_rows, device=batch.inputs.device)]
        run = CamRun.for_classes(ctx.handle, x, classes[res_rows].tolist(), batch_size=self._rows(ctx), seed=ctx.seed)
        run.amp = ctx.autocast
        return run

    def _faith_records(self, ctx: RunContext, batch: Batch, res: CamResult, classes: torch.Tensor,
                       batch_rows: list[int], res_rows: list[int]) -> RecordState:
        """Deletion / insertion, Average Drop and random maps of the sample images, in shared passes."""
        run = self._eval_run(ctx, batch, classes, batch_rows, res_rows)
        names = list(res.maps)
        sel = torch.as_tensor(res_rows, dtype=torch.long)
        stack = [res.maps[m][sel.to(res.maps[m].device)].to(run.inputs.device) for m in names]
        keys = [int(batch.indices[j]) for j in batch_rows]
        grids = sorted({res.grid(m) for m in names}) if self.n_random else []
        for grid in grids:
            rand = baseline.random_maps(keys, grid, run.size, int(self.n_random), seed=ctx.seed)
            stack.extend(rand.to(run.inputs.device).unbind(0))
        f = metrics.faithfulness(run, torch.stack(stack), steps=int(self.steps),
                                 average_drop=[k < len(names) for k in range(len(stack))])
        score = f.insertion - f.deletion
        r = int(self.n_random)
        records = [FaithRecord({m: MethodScores(float(f.deletion[a, k]), float(f.insertion[a, k]),
                                                float(f.drop[a, k]), float(f.increase[a, k]))
                                for a, m in enumerate(names)},
                               {grid: score[len(names) + g * r: len(names) + (g + 1) * r, k].copy()
                                for g, grid in enumerate(grids)})
                   for k in range(len(keys))]
        return RecordState.from_batch(np.asarray(keys), rec=records)

    def _road_records(self, ctx: RunContext, batch: Batch, res: CamResult, classes: torch.Tensor,
                      batch_rows: list[int], res_rows: list[int]) -> RecordState:
        """ROAD of every method's maps of the sample images."""
        run = self._eval_run(ctx, batch, classes, batch_rows, res_rows)
        sel = torch.as_tensor(res_rows, dtype=torch.long)
        per = {m: metrics.road(run, maps[sel.to(maps.device)], levels=self.road_levels, seed=ctx.seed)
               for m, maps in res.maps.items()}
        records = [RoadRecord({m: RoadScores(float(r["morf_mean"][k]), float(r["lerf_mean"][k]))
                               for m, r in per.items()}) for k in range(len(batch_rows))]
        return RecordState.from_batch(np.asarray([int(batch.indices[j]) for j in batch_rows]), rec=records)

    # -- rounds -----------------------------------------------------------------------------------
    def _widths(self, state: CamState) -> dict[str, list[float]]:
        """Current CI half-widths of the sampled quantities (per sample kind, every method)."""
        faith: list[FaithRecord] = state.faith.column("rec")
        road: list[RoadRecord] = state.road.column("rec")
        methods = self._methods()
        out: dict[str, list[float]] = {"metrics": [], "road": []}
        for m in methods:
            score = np.array([r.methods[m].faithfulness for r in faith])
            out["metrics"].append(half_width(score))
            grid = state.grids.get(m)
            if self.n_random and grid is not None and faith:
                rand = np.array([r.random[grid].mean() for r in faith])
                out["metrics"].append(half_width(score - rand))
            out["road"].append(half_width(np.array([r.methods[m].combined for r in road])))
        return out

    def next_round(self, ctx: RunContext, state: CamState, number: int, allowance_s: float | None
                   ) -> RoundRequest | None:
        """The next stage of the metric and ROAD samples, while their CIs are wider than ``precision``.

        The decisions are recorded in ``state.log`` (the same on every worker).
        """
        if ctx.data.kind != "images":
            return None
        n_all = len(ctx.data)
        widths = self._widths(state)
        sizes = {"metrics": len(state.faith.records), "road": len(state.road.records)}
        schedules = self._schedules()
        open_ = [k for k in schedules if not (state.log.get(k) and state.log[k].stopped)]
        share = None if allowance_s is None or not open_ else allowance_s / len(open_)
        spans = {}
        for kind in open_:
            log = state.log.setdefault(kind, SampleLog())
            size = schedules[kind].advance(log, sizes[kind], widths[kind], n_all,
                                           cost_per_image=state.seconds_per_image(kind), allowance_s=share)
            if size is not None:
                spans[kind] = (sizes[kind], size)
        if not spans:
            return None
        wanted = {int(i) for lo, hi in spans.values() for i in self.order_[lo:hi]}
        return RoundRequest(tuple(sorted(wanted)), Stage(spans.get("metrics", (0, 0)), spans.get("road", (0, 0))))

    # -- finalize -------------------------------------------------------------------------------
    def finalize(self, ctx: RunContext, state: CamState) -> Section:
        """Summaries with CIs, the random-map test, the sanity check, examples and findings."""
        recs: list[ImageRecord] = state.images.column("rec")
        indices = [int(i) for i in state.images.indices()]
        faith: list[FaithRecord] = state.faith.column("rec")
        road: list[RoadRecord] = state.road.column("rec")
        methods = self._methods()
        seed = int(ctx.rng(self.name, "bootstrap").integers(0, 2**31))
        masks = ctx.data.mask_names()
        values = {m: self._values(faith, road, m) for m in methods}
        rows = {m: MethodSummary(
            m, state.grids.get(m), {key: self._metric(values[m][key], METRICS[key], seed) for key in METRICS},
            {mask: self._pointing_summary(recs, m, mask, seed) for mask in masks},
            self._vs_random(faith, values[m]["faithfulness"], state.grids.get(m), seed)) for m in methods}
        self._holm(rows)
        sanity, sanity_log = self._sanity(ctx, recs, indices) if self.sanity and recs else (None, None)
        if sanity is not None:
            for m in methods:
                rows[m].sanity = sanity["methods"][m]
        summaries = [rows[m] for m in methods]
        examples, assets = self._examples(ctx, recs, indices, faith_by_index(state), methods)
        localisation = self._localisation(ctx, recs, methods, seed)
        findings = self._findings(ctx, summaries) + failure_findings(localisation["rows"], self.name, ctx.data.kind)
        best = max((r for r in summaries if r.metrics["faithfulness"]["value"] is not None),
                   key=lambda r: _value(r.metrics["faithfulness"]), default=None)
        layer = self._layer(ctx)
        faith_ids = [ctx.data.ids[int(i)] for i in state.faith.indices()]
        data = {
            "layer": layer if isinstance(layer, str) or layer is None else list(layer),
            "target": "predicted class" if self.target == "predicted" else "true label",
            "methods": [r.to_dict() for r in summaries],
            "metric_definitions": {k: {"label": label, "unit": unit, "higher_is_better": hib}
                                   for k, (label, unit, hib) in METRICS.items()},
            "masks": masks,
            "artifact_masks": [m for m in masks if m in ctx.data.artifact_concepts],
            "localisation": localisation,
            "not_measured": None if ctx.data.kind == "images" else IMAGE_ONLY_METRICS,
            "examples": examples,
            "sanity": None if sanity is None else {k: v for k, v in sanity.items() if k != "methods"},
            "sampling": self._sampling(ctx, state, sanity_log),
            "per_image": {"ids": [ctx.data.ids[i] for i in indices], "class": [r.cls for r in recs],
                          "probability": [r.prob for r in recs],
                          "pointing": {mask: {m: [r.pointing[m][mask].hit for r in recs] for m in methods}
                                       for mask in masks}},
            "sample_metrics": {"ids": faith_ids,
                               "metrics": {m: {k: v.tolist() for k, v in values[m].items() if not k.startswith("road")}
                                           for m in methods},
                               "road_ids": [ctx.data.ids[int(i)] for i in state.road.indices()],
                               "road": {m: {k: v.tolist() for k, v in values[m].items() if k.startswith("road")}
                                        for m in methods}},
            "notes": _NOTES,
            "maps_folder": f"samples/{self.name}" if self.save_maps and ctx.out_dir is not None else None,
        }
        failed = [r.name for r in summaries if r.sanity_failed]
        weak = [r.name for r in summaries if r.beats_random is False]
        summary = {
            "methods": len(methods),
            "best_method": best.name if best else None,
            "best_insertion_minus_deletion": best.metrics["faithfulness"] if best else None,
            "sanity_failures": ", ".join(failed) or "none",
            "not_better_than_random": ", ".join(weak) or "none",
            "metric_images": len(faith),
            "fail_to_localise": ", ".join(f"{r['method']} ({r['label']})" for r in localisation["rows"]
                                          if r["verdict"] == "fails") or "none",
        }
        return self.section(summary=summary, data=data, findings=findings, assets=assets)

    def _localisation(self, ctx: RunContext, recs: list[ImageRecord], methods: list[str], seed: int) -> dict[str, Any]:
        """The localisation table (:func:`localisation_row` per method and non-artifact mask) and its rule."""
        masks = [m for m in ctx.data.mask_names() if m not in ctx.data.artifact_concepts]
        rows = [localisation_row(
            m, mask, np.array([r.pointing[m][mask].hit for r in recs]),
            np.array([r.pointing[m][mask].energy for r in recs]), np.array([r.chance[mask][0] for r in recs]),
            np.array([r.chance[mask][1] for r in recs]), min_hit_rate=float(self.min_hit_rate),
            n_resamples=int(self.n_resamples), seed=seed) for m in methods for mask in masks]
        return {"rows": rows, "min_hit_rate": float(self.min_hit_rate), "rule": RULE,
                "n_resamples": int(self.n_resamples), "seed": seed, "tolerance": self.pointing_tolerance,
                "excluded": [m for m in ctx.data.mask_names() if m in ctx.data.artifact_concepts]}

    @staticmethod
    def _values(faith: list[FaithRecord], road: list[RoadRecord], m: str) -> dict[str, np.ndarray]:
        """Per-image values of every metric of method ``m`` over its sample (in index order)."""
        scores = [r.methods[m] for r in faith]
        roads = [r.methods[m] for r in road]
        return {
            "deletion": np.array([s.deletion for s in scores]), "insertion": np.array([s.insertion for s in scores]),
            "faithfulness": np.array([s.faithfulness for s in scores]),
            "average_drop": np.array([s.average_drop for s in scores]),
            "increase": np.array([s.increase for s in scores]),
            "road_morf": np.array([s.morf for s in roads]), "road_lerf": np.array([s.lerf for s in roads]),
            "road_combined": np.array([s.combined for s in roads]),
        }

    def _sampling(self, ctx: RunContext, state: CamState, sanity: dict[str, Any] | None) -> dict[str, Any]:
        """``n`` and why, for every sample."""
        widths = self._widths(state)
        sizes = {"metrics": len(state.faith.records), "road": len(state.road.records)}
        out = {kind: schedule.report(state.log.get(kind), sizes[kind], widths[kind], len(ctx.data))
               for kind, schedule in self._schedules().items()}
        if sanity is not None:
            out["sanity"] = sanity
        return out

    def _metric(self, values: np.ndarray, spec: tuple[str, str, bool], seed: int) -> dict[str, Any]:
        ok = values[np.isfinite(values)]
        ci = bootstrap_ci(ok, n_resamples=int(self.n_resamples), seed=seed) if ok.size > 1 else None
        return metric(float(ok.mean()) if ok.size else None, ci, n=int(ok.size), unit=spec[1],
                      higher_is_better=spec[2], label=spec[0])

    def _pointing_summary(self, recs: list[ImageRecord], method: str, mask: str, seed: int) -> dict[str, Any]:
        hits = np.array([r.pointing[method][mask].hit for r in recs])
        energy = np.array([r.pointing[method][mask].energy for r in recs])
        ok = hits[np.isfinite(hits)]
        n, k = int(ok.size), int(ok.sum())
        return {"hit_rate": metric(k / n if n else None, wilson_interval(k, n) if n else None, n=n,
                                   unit="fraction of images with the mask", higher_is_better=None,
                                   ci_method="Wilson"),
                "energy": self._metric(energy, ("energy inside the mask", "fraction of map mass", True), seed)}

    def _vs_random(self, faith: list[FaithRecord], score: np.ndarray, grid: tuple[int, int] | None, seed: int
                   ) -> dict[str, Any] | None:
        if not self.n_random or grid is None:
            return None
        rows = [k for k, r in enumerate(faith) if np.isfinite(score[k]) and grid in r.random]
        if len(rows) < 2:
            return None
        rand = np.array([faith[k].random[grid] for k in rows])
        out = baseline.better_than_random(score[rows], rand, n_resamples=int(self.n_resamples), seed=seed)
        out["score"] = "insertion AUC − deletion AUC"
        out["random_grid"] = list(grid)
        return out

    @staticmethod
    def _holm(rows: dict[str, MethodSummary]) -> None:
        tested = [r for r in rows.values() if r.vs_random is not None]
        p = np.array([np.nan if r.vs_random["p"] is None else r.vs_random["p"] for r in tested])  # type: ignore[index]
        adjusted = adjust_pvalues(p, "holm")
        for r, q in zip(tested, adjusted):
            test = r.vs_random
            assert test is not None
            test["p_holm"] = float(q) if np.isfinite(q) else None
            test["correction"] = f"Holm over {len(tested)} methods"
            test["significant"] = bool(np.isfinite(q) and q < 0.05)

    def _sanity(self, ctx: RunContext, recs: list[ImageRecord], indices: list[int]
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The randomisation test on the first images of the sample order, grown while a verdict is open."""
        pos = {i: k for k, i in enumerate(indices)}
        order = [int(i) for i in self.order_ if int(i) in pos]
        schedule = SampleSchedule(int(self.min_sanity_images), int(self.sanity_images), None,
                                  "a decided verdict (PASS or FAIL) for every method")
        n = schedule.first(len(order))
        if not n:
            return None, None
        stages, result, reason = [], None, ""
        while True:
            t = time.perf_counter()
            chosen = sorted(order[:n])
            inputs = ctx.handle.preprocess(ctx.load_images(chosen)).to(ctx.device)
            result = parameter_randomization(
                ctx.handle, inputs, methods=self._methods(), classes=[recs[pos[i]].cls for i in chosen],
                layer=self._layer(ctx), params=self.method_params, steps=int(self.sanity_steps),
                threshold=float(self.sanity_threshold), batch_size=self._rows(ctx), seed=ctx.seed,
                n_resamples=int(self.n_resamples), layout=self._spatial_layout())
            stages.append(n)
            spent = time.perf_counter() - t
            if all(r["verdict"] != "INCONCLUSIVE" for r in result["methods"].values()):
                reason = "every verdict decided"
                break
            grown = min(2 * n, int(self.sanity_images), len(order))
            if grown <= n:
                reason = "maximum sample size reached" if n >= int(self.sanity_images) else "every image used"
                break
            if ctx.budget is not None and ctx.budget.remaining() < spent * grown / n:
                reason = f"time budget: a stage of {grown} images (about {spent * grown / n:.0f} s) does not fit"
                break
            n = grown
        log = {"n": n, "minimum": schedule.minimum, "maximum": schedule.maximum, "quantity": schedule.quantity,
               "stages": stages, "stopped": reason,
               "rule": "first images of the metric sample's order; doubles while a verdict is INCONCLUSIVE"}
        return result, log

    def _examples(self, ctx: RunContext, recs: list[ImageRecord], indices: list[int],
                  faith: dict[int, FaithRecord], methods: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        names = list(ctx.class_names)
        examples, assets = [], {}
        shown = [(i, r) for i, r in zip(indices, recs) if r.example is not None]
        for n, (i, r) in enumerate(shown):
            ex = r.example
            assert ex is not None
            fields, images = render.example_assets(f"ex{n}", ex.view, {m: ex.maps[m] for m in methods})
            assets.update(images)
            concepts = []
            if ctx.data.concepts is not None:
                concepts = [c for c, v in zip(ctx.data.concept_names, ctx.data.concepts[i]) if v]
            scores = faith.get(i)
            examples.append({
                "id": ctx.data.ids[i], **fields,
                "explained_class": _name(names, r.cls), "probability": r.prob,
                "label": _name(names, r.label) if r.label >= 0 else None,
                "artifacts": [c for c in concepts if c in ctx.data.artifact_concepts],
                "metrics": {m: {**(_scores_dict(scores.methods[m]) if scores else {}),
                                **{f"points_at_{mask}": v.hit for mask, v in r.pointing[m].items()}}
                            for m in methods},
            })
        return examples, assets

    def _findings(self, ctx: RunContext, rows: list[MethodSummary]) -> list[Finding]:
        out = []
        for r in rows:
            title = get_method(r.name).title
            if r.sanity_failed:
                assert r.sanity is not None
                out.append(Finding("warning", f"{title} fails the weight-randomisation sanity check: "
                                   f"{r.sanity['reason']}", self.name, {"method": r.name}))
            test = r.vs_random
            if test is not None and not test["significant"]:
                adv = test["advantage"]
                out.append(Finding(
                    "warning", f"{title} is not better than random maps of the same resolution on "
                    f"insertion − deletion (mean advantage {_fmt(adv['value'])} [95% CI {_fmt(adv['ci_low'])}, "
                    f"{_fmt(adv['ci_high'])}], Holm p={_fmt(test['p_holm'])}, n={test['n']})",
                    self.name, {"method": r.name, "test": test}))
        for mask in (m for m in ctx.data.mask_names() if m in ctx.data.artifact_concepts):
            hit = rows[0].pointing[mask]["hit_rate"] if rows else None
            if hit and hit["ci_low"] is not None and hit["ci_low"] > 0.5:
                out.append(Finding(
                    "warning", f"{get_method(rows[0].name).title} peaks on the artifact '{mask}' in {hit['value']:.0%} "
                    f"of the {hit['n']} images that carry it [95% CI {hit['ci_low']:.0%}, {hit['ci_high']:.0%}]: the "
                    "model appears to rely on it", self.name,
                    {"mask": mask, "hit_rate": {r.name: r.pointing[mask]["hit_rate"] for r in rows}}))
        return out


def faith_by_index(state: CamState) -> dict[int, FaithRecord]:
    """The metric sample's records by probe-set index."""
    return dict(zip((int(i) for i in state.faith.indices()), state.faith.column("rec")))


def _scores_dict(s: MethodScores) -> dict[str, float]:
    return {"deletion": s.deletion, "insertion": s.insertion, "faithfulness": s.faithfulness,
            "average_drop": s.average_drop, "increase": s.increase}


def _value(m: dict[str, Any]) -> float:
    return m["value"] if m and m["value"] is not None else -math.inf


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _name(names: list[str], c: int) -> str:
    return names[c] if 0 <= c < len(names) else str(c)


#: Why a volume run has no faithfulness numbers.
IMAGE_ONLY_METRICS = (
    "deletion/insertion, Average Drop, ROAD and the random-map test are measured on 2-D images only (their "
    "substrates, the insertion blur, ROAD's imputation and the random maps, are 2-D); on volumes the section "
    "reports the maps (slice views), the pointing game and localisation table, and the sanity check")

_NOTES = (
    "Maps explain the class named per image (its logit); perturbation metrics read its softmax probability. "
    "Deletion/insertion (RISE): pixels ranked by the map are replaced by zeros of the normalised input "
    "(deletion) or restored into a blurred copy (insertion); AUC over the fraction changed. Average Drop and "
    "Increase in Confidence multiply the normalised input by the map. ROAD removes the most (MoRF) / least "
    "(LeRF) relevant pixels with noisy linear imputation; combined = (LeRF − MoRF)/2. Pointing game: hit when "
    "the map's maximum lies within the tolerance of the mask (Wilson CI), over every image. Faithfulness "
    "metrics, random maps and ROAD use sequential samples of the images (seeded hash order of the ids, stages "
    "doubling until the 95% CI half-width reaches the precision asked for; n and why in 'sampling'); the sanity "
    "check uses the first images of the same order. All other CIs: 95% percentile bootstrap over images."
)


class GradCam(_AttributionAnalyzer):
    """Class-activation maps (Grad-CAM family) with faithfulness metrics and sanity checks."""

    name = "gradcam"
    title = "Class-activation maps (Grad-CAM family)"
    summary = ("Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, EigenCAM (+ Score-/Ablation-CAM, Smooth "
               "Grad-CAM++ on request) with deletion/insertion, ROAD, pointing game, random-map test, sanity check")
    requires = frozenset({"module_hooks", "gradients"})
    run_by_default = True
    inputs = frozenset({"images", "volumes"})  # volumes: the methods of VOLUME_KINDS, maps upsampled trilinearly
    method_kinds = ("gradient", "activation", "noise", "perturbation", "backward")


class CaptumAttributions(_AttributionAnalyzer):
    """Input-level attributions from captum (also for TorchScript models), with the same metrics."""

    name = "captum"
    title = "Input attributions (captum)"
    summary = ("Saliency (+ Integrated Gradients, SmoothGrad, Occlusion, GradientSHAP on request) without "
               "module hooks, with the gradcam analyzer's metrics")
    requires = frozenset({"gradients"})
    run_by_default = True
    method_kinds = ("input",)
