"""``prototypes``: what each prototype responds to — hue, shape, texture, contrast, saturation.

Nauta et al. (2021), "This Looks Like That, Because ...": every image of the probe set is
perturbed in one characteristic at a time; the drop of a prototype's similarity at the location
that matched best in the original image is the characteristic's local importance, and the
similarity-weighted mean over a split is its global importance. Prototype networks (ProtoPNet,
ProtoTree, TesNet-like) are read through their prototype tensor; ordinary CNNs and ViTs through
channel-as-prototype or exemplar (latent-cell / k-means) prototypes, see
:mod:`explainkit.prototypes.adapters`.

These raw importances are not comparable across characteristics (a contrast change moves almost every
activation of any network). The headline — what the model relies on — is the calibrated decision
relevance of :mod:`explainkit.prototypes.relevance`: the change of log p(target) under each
perturbation, a matched control subtracted, divided by the perturbation's dose in re-initialised
copies of the architecture and compared with the copies (:mod:`explainkit.prototypes.calibration`);
"relies most on X" only when X is significantly ahead (docs/prototypes.md).

Images: every image costs the original and each perturbed copy through the model, so the analyzer
measures a sequential sample (:mod:`explainkit.stats.sequential`): images enter in a seeded hash
order of their ids, ``min_images`` in the main pass, then doubling in follow-up rounds until the 95 %
CI half-width of each characteristic's mean local importance (averaged over prototypes, per image)
is at most ``precision`` times the largest such mean, or ``images`` are measured, or the time budget
is spent. ``data.sampling`` reports n and why.

Train vs test: the reference computes global explanations on the model's training and test sets.
From one probe set the analyzer draws a seeded split: image ``i`` is in "train" with probability
``train_fraction``, decided by a generator derived from ``(seed, i)`` alone, so the split does not
depend on batching. Prototype patches come from the top-activating "train" image; the per-prototype
tests and local examples use "test" images.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import stats

from explainkit.adapters import resolve_layer
from explainkit.adapters.randomize import RANDOMIZERS
from explainkit.analyzers.base import Analyzer, Batch, Finding, RoundRequest, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.options import Option
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.prototypes.calibration import (
    CALIBRATIONS,
    NULL_KEEP_BYTES,
    NullComparison,
    NullCopy,
    control_perturbations,
    model_bytes,
    null_adapter,
    null_handle,
)
from explainkit.prototypes.decision import DecisionRows
from explainkit.prototypes.explanation import ExplanationBatch, ExplanationContext
from explainkit.prototypes.importance import (
    WEIGHTS,
    LazyViews,
    SplitAccumulator,
    relative_drop,
    resolve_weight,
    score_views,
    view_images,
)
from explainkit.prototypes.parts import PartRows, clipped_noise, part_keypoints, part_scores, prototype_part_hits
from explainkit.prototypes.perturb import CHARACTERISTICS, DEFAULT_CHARACTERISTICS, make_perturbations
from explainkit.prototypes.regions import RegionAnalysis
from explainkit.prototypes.registry import (
    AdapterKind,
    AdapterRequest,
    detect_adapter_kind,
    get_adapter_kind,
    list_adapter_kinds,
)
from explainkit.prototypes.relevance import decision_relevance, prototype_relevance
from explainkit.prototypes.similarity import SIMILARITIES
from explainkit.prototypes.statistics import (
    GlobalScores,
    generalisation,
    global_scores,
    local_tests,
    redundancy_groups,
    verdict,
)
from explainkit.prototypes.visuals import PATCH_SIDE, VIEW_SIDE, prototype_box, views, with_box
from explainkit.report.images import thumbnail, to_data_uri
from explainkit.stats import bootstrap_ci
from explainkit.stats.sequential import Moments, SampleLog, SampleSchedule, priority_order
from explainkit.stats.streaming import poisson_counts

__all__ = ["PrototypeRegions", "Prototypes"]

TARGETS = ("auto", "predicted")
#: Probe images whose latent cells become the exemplar prototypes of re-initialised copies.
NULL_IMAGES = 16
DECISION_UNIT = ("nats per unit dose: |change of log p(target class)| ÷ the perturbation's relative strength in "
                 "re-initialised copies, minus the same for the copies")
CALIBRATED_UNIT = ("importance ÷ (the model's mean |change| × the re-initialised copies' relative |change| for the "
                   "characteristic); 1 = as in an untrained network")
#: How the units are written inside a headline sentence.
SHORT_UNITS = {DECISION_UNIT: "nats per unit dose, calibrated", CALIBRATED_UNIT: "× an untrained network"}
SPLITS = ("train", "test")
#: Generic adapter kinds whose prototypes have no class (nothing to read per class region).
CLASSLESS_KINDS = ("channels", "exemplars", "kmeans")
#: Most prototypes listed in the HTML table (the JSON has all).
TABLE_ROWS = 256


class Prototypes(Analyzer):
    """Prototype-meaning quantification with local/global importances, tests and redundancy.

    Parameters
    ----------
    adapter : str
        ``"auto"`` (the model's own kind when a registered adapter recognises it, e.g. a prototype
        model of :mod:`explainkit.prototypes.models`; else its prototype tensor if it has one; else
        channels), ``"vectors"``, ``"channels"``, ``"exemplars"`` (latent cells given in
        ``exemplar_cells``), ``"kmeans"`` (``per_class`` k-means centres of each class's latent
        cells from "train" images) or a model kind (``case_based``, ``st_protopnet``, ``tversky``,
        ``hopfield``, ``cbc``, ``prob_psenn``; see :mod:`explainkit.prototypes.registry`).
    layer : str, optional
        Latent layer (default: the run's ``--layer``; for prototype networks the layer before the
        prototypes; otherwise the default layer of the architecture).
    prototype_tensor : str, optional
        Dotted name of the prototype tensor (found automatically when omitted).
    similarity : str
        ``"auto"`` or one of ``log``, ``linear``, ``exp``, ``cosine``, ``projection`` (vector,
        exemplar and k-means prototypes; exemplar and k-means default to ``log``).
    channels : list of int, optional
        Channel prototypes: which channels (default all).
    softmax : bool
        Channel prototypes: softmax over channels at every location first (PIP-Net).
    exemplar_cells : list of [int, int, int], optional
        Exemplar prototypes: ``[probe index, row, column]`` latent cells.
    per_class : int
        k-means prototypes per class.
    prototypes : list of int, optional
        Analyse only these prototypes (similarity maps are computed for them only).
    characteristics : list of str
        Perturbed characteristics (``brightness`` is available, off by default).
    perturbation_params : dict, optional
        Per characteristic, parameter overrides (see :func:`explainkit.perturb`).
    jpeg : bool
        Emulate the reference's JPEG re-encoding of perturbed images.
    readout : str
        ``"fixed"`` (reference) or ``"max"`` (first-generation notebooks).
    weight : str
        Weight of the global mean: ``auto``, ``similarity``, ``clip``, ``softplus``, ``uniform``.
    train_fraction : float
        Probability that an image lands in the "train" split.
    n_resamples : int
        Poisson-bootstrap resamples for the CIs of global scores.
    sample_size : int
        Images per split whose local scores are kept for the tests and local examples.
    alpha : float
        False-discovery rate for the per-prototype tests.
    redundancy_tolerance : float
        Relative distance at or below which prototype vectors / explanation vectors are
        near-identical.
    local_images : int
        Test images shown with a local explanation.
    max_shown : int
        Prototypes shown with patches in the HTML report (the most present ones).
    images : int
        Most images measured (0: every image).
    min_images : int
        First stage of the image sample (always measured).
    precision : float
        Target 95 % CI half-width of every characteristic's mean local importance, as a fraction of
        the largest mean (0: grow to ``images``).
    grid : sequence of int, optional
        (h, w) patch grid of a token latent layer (ViT) when the model does not declare it and the
        token count is ambiguous (``grid=14|14`` on the command line).
    prefix_tokens : int, optional
        Tokens before the patch tokens of that layer (CLS, registers).
    calibration : str
        ``"reinit"`` (compare with ``null_models`` copies whose parameters are re-initialised; see
        :mod:`explainkit.prototypes.calibration`) or ``"none"`` (no copies: the decision relevance is
        not divided by a dose and has no null, so an untrained model may get a confident headline).
    null_models : int
        Re-initialised copies (at least 2, so the null has a spread).
    null_init : str
        How copies are re-initialised: ``"permute"`` (every parameter tensor's values shuffled:
        the weight statistics stay, the structure goes) or ``"reset"`` (each layer's
        ``reset_parameters``).
    controls : bool
        Subtract matched controls (the contrast perturbation's chroma part, i.e. saturation at
        the same factor) before ranking.
    target : str
        Class whose decision is followed: ``"auto"`` (the label where the probe set has one the
        model knows, else the predicted class) or ``"predicted"``.
    model_options : dict, optional
        Options of the model-specific adapter (e.g. ``{"samples": 8}`` for ``prob_psenn``; each
        kind lists its keys in its registry entry).
    """

    name = "prototypes"
    title = "Prototype meaning: hue, shape, texture, contrast, saturation"
    summary = "which image characteristics each prototype (or channel) relies on (Nauta et al. 2021), with tests"
    requires = frozenset({"module_hooks", "images"})
    run_by_default = True
    options: ClassVar[Mapping[str, Option]] = {
        "adapter": Option("choice", choices=lambda: ("auto", *list_adapter_kinds()),
                          help="how prototypes are read from the model (a registered adapter kind)"),
        "layer": Option("str", help="latent layer (default: the run's --layer, else found from the model)"),
        "prototype_tensor": Option("str", help="dotted name of the prototype tensor (default: found automatically)"),
        "similarity": Option("choice", choices=("auto", *SIMILARITIES), help="distance → similarity of vector, "
                                                                              "exemplar and k-means prototypes"),
        "channels": Option("int", low=0, many=True, help="channel prototypes: which channels (default all)"),
        "softmax": Option("bool", help="channel prototypes: softmax over channels first (PIP-Net)"),
        "exemplar_cells": Option("int", low=0, many=2, help="exemplar prototypes: [probe index, row, column] cells"),
        "per_class": Option("int", low=0, help="k-means prototypes per class"),
        "prototypes": Option("int", low=0, many=True, help="analyse only these prototypes (default all)"),
        "characteristics": Option("choice", choices=CHARACTERISTICS, many=True, help="perturbed characteristics"),
        "perturbation_params": Option("mapping", choices=CHARACTERISTICS,
                                      help="per characteristic, parameter overrides (see explainkit.perturb)"),
        "jpeg": Option("bool", help="emulate the reference's JPEG re-encoding of perturbed images"),
        "readout": Option("choice", choices=("fixed", "max"), help="'fixed' (reference) or 'max' (early notebooks)"),
        "weight": Option("choice", choices=WEIGHTS, help="weight of the global mean"),
        "train_fraction": Option("float", low=0, high=1, low_open=True, high_open=True,
                                 help="probability that an image lands in the 'train' split"),
        "n_resamples": Option("int", low=50, help="Poisson-bootstrap resamples for the CIs of global scores"),
        "sample_size": Option("int", low=5, help="images per split whose local scores are kept for the tests"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="false-discovery rate of the per-prototype tests"),
        "redundancy_tolerance": Option("float", low=0, help="relative distance at or below which prototypes are "
                                                            "near-identical"),
        "local_images": Option("int", low=0, help="test images shown with a local explanation"),
        "max_shown": Option("int", low=0, help="prototypes shown with patches in the HTML report"),
        "images": Option("int", low=0, help="most images measured (0: every image)"),
        "min_images": Option("int", low=2, help="first stage of the image sample"),
        "precision": Option("float", low=0, help="target CI half-width of each characteristic's mean local "
                                                 "importance, as a fraction of the largest mean (0: grow to images)"),
        "grid": Option("int", low=1, many=True, help="(h, w) patch grid of a token latent layer when the token "
                                                     "count is ambiguous, e.g. grid=14|14"),
        "prefix_tokens": Option("int", low=0, help="tokens before the patch tokens of that layer"),
        "calibration": Option("choice", choices=CALIBRATIONS, help="'reinit': compare with re-initialised copies of "
                                                                    "the model; 'none': no copies (no dose, no null)"),
        "null_models": Option("int", low=2, high=32, help="re-initialised copies (calibration='reinit')"),
        "null_init": Option("choice", choices=tuple(RANDOMIZERS), help="how copies are re-initialised: 'permute' "
                                                                      "each parameter's values or 'reset' them"),
        "controls": Option("bool", help="subtract matched controls (contrast: saturation at the same factor)"),
        "target": Option("choice", choices=TARGETS, help="class whose decision is followed: 'auto' (label, else "
                                                         "predicted) or 'predicted'"),
        "parts": Option("str", many=True, or_one=True, help="EvalProtoPNet part consistency/stability: the probe "
                        "set's part mask folders (default: off)"),
        "part_threshold": Option("float", low=0, high=1, help="part scores: best-part frequency at or above which a "
                                 "prototype is consistent (reference 0.8)"),
        "part_noise": Option("float", low=0, help="part scores: stability noise σ in model-input units (reference 0.2 "
                             "in ImageNet-normalised space; 0 skips stability)"),
        "part_clip": Option("float", low=0, help="part scores: noise clipped to ±this (reference 0.25)"),
        "part_half_size": Option("float", low=0, low_open=True, help="part scores: region half-side in input pixels "
                                 "(default: 36/224 of the input side, the reference's 36 px at 224 px)"),
        "model_options": Option("mapping", help="options of the model-specific adapter kind (e.g. prob_psenn: "
                                                "samples, seed)"),
    }

    def __init__(self, adapter: str = "auto", layer: str | None = None, prototype_tensor: str | None = None,
                 similarity: str = "auto", channels: list[int] | None = None, softmax: bool = False,
                 exemplar_cells: list[list[int]] | None = None, per_class: int = 3,
                 prototypes: list[int] | None = None, characteristics: tuple[str, ...] = DEFAULT_CHARACTERISTICS,
                 perturbation_params: dict[str, dict[str, float]] | None = None, jpeg: bool = False,
                 readout: str = "fixed", weight: str = "auto", train_fraction: float = 0.5, n_resamples: int = 200,
                 sample_size: int = 256, alpha: float = 0.05, redundancy_tolerance: float = 0.05,
                 local_images: int = 3, max_shown: int = 8, images: int = 256, min_images: int = 64,
                 precision: float = 0.1, grid: Sequence[int] | None = None, prefix_tokens: int | None = None,
                 calibration: str = "reinit", null_models: int = 3, null_init: str = "permute", controls: bool = True,
                 target: str = "auto", parts: list[str] | None = None, part_threshold: float = 0.8,
                 part_noise: float = 0.2, part_clip: float = 0.25, part_half_size: float | None = None,
                 model_options: dict[str, Any] | None = None) -> None:
        self.adapter = adapter
        self.layer = layer
        self.prototype_tensor = prototype_tensor
        self.similarity = similarity
        self.channels = channels
        self.softmax = softmax
        self.exemplar_cells = exemplar_cells
        self.per_class = per_class
        self.prototypes = prototypes
        self.characteristics = characteristics
        self.perturbation_params = perturbation_params
        self.jpeg = jpeg
        self.readout = readout
        self.weight = weight
        self.train_fraction = train_fraction
        self.n_resamples = n_resamples
        self.sample_size = sample_size
        self.alpha = alpha
        self.redundancy_tolerance = redundancy_tolerance
        self.local_images = local_images
        self.max_shown = max_shown
        self.images = images
        self.min_images = min_images
        self.precision = precision
        self.grid = grid
        self.prefix_tokens = prefix_tokens
        self.calibration = calibration
        self.null_models = null_models
        self.null_init = null_init
        self.controls = controls
        self.target = target
        self.parts = parts
        self.part_threshold = part_threshold
        self.part_noise = part_noise
        self.part_clip = part_clip
        self.part_half_size = part_half_size
        self.model_options = model_options

    # ------------------------------------------------------------------ setup

    def validate(self, ctx: RunContext) -> None:
        """Rules across parameters and against the probe set and the model (nothing is fitted)."""
        make_perturbations(tuple(self.characteristics), self.perturbation_params, jpeg=self.jpeg)
        if self.adapter == "exemplars":
            if not self.exemplar_cells:
                raise ConfigError("prototypes: adapter 'exemplars' needs exemplar_cells "
                                  "[[probe index, row, column], ...]")
            if any(len(c) != 3 or not 0 <= c[0] < len(ctx.data) for c in self.exemplar_cells):
                raise ConfigError("prototypes: exemplar_cells must be [probe index, row, column] of probe images")
        if self.adapter == "kmeans" and not ctx.data.has_labels:
            raise ConfigError("prototypes: adapter 'kmeans' needs a labelled probe set")
        if self.grid is not None and len(self.grid) != 2:
            raise ConfigError(f"prototypes: grid must be two integers h|w, not {self.grid!r}")
        layer = self.layer or ctx.layer
        if layer is not None:
            resolve_layer(ctx.handle.module, layer)
        self._kind(ctx).resolve_options(self.model_options)
        missing = sorted(set(self.parts or ()) - set(ctx.data.mask_names()))
        if missing:
            raise ConfigError(f"prototypes: parts {missing} have no mask folder (the probe set has "
                              f"{ctx.data.mask_names() or 'none'})")

    def prepare(self, ctx: RunContext) -> None:
        """Fit what ``map`` needs: the adapter, the model's explanation part, prototype ids, perturbations.

        Sets ``adapter_``, ``explanation_``, ``prototype_ids_``, ``perturbations_``, ``weight_rule_`` and the
        sample order ``order_``;
        k-means and exemplar prototypes are fitted on the run's data. Deterministic: every worker that
        prepares the run fits the same.
        """
        self.adapter_ = self._build_adapter(ctx)
        self.explanation_ = self.adapter_.explanation()
        total = self.adapter_.num_prototypes
        ids = list(range(total)) if self.prototypes is None else [int(p) for p in self.prototypes]
        bad = [p for p in ids if not 0 <= p < total]
        if bad or not ids or len(set(ids)) != len(ids):
            raise ConfigError(f"prototypes: bad prototype indices {bad[:5] or ids[:5]} (the model has {total})")
        self.prototype_ids_ = ids
        self.perturbations_ = make_perturbations(tuple(self.characteristics), self.perturbation_params, jpeg=self.jpeg)
        controls, self.control_pairs_ = control_perturbations(self.perturbations_) if self.controls else ([], [])
        self.views_ = [*self.perturbations_, *controls]
        self.weight_rule_ = resolve_weight(self.weight, self.adapter_)
        order = priority_order(ctx.data.ids, ctx.seed, self.name)
        self.position_ = np.empty(len(order), dtype=np.int64)
        self.position_[order] = np.arange(len(order))
        self.order_ = order
        self.nulls_ = self._null_models(ctx)

    def _schedule(self, n_all: int) -> SampleSchedule:
        return SampleSchedule(int(self.min_images), int(self.images) or n_all, float(self.precision) or None,
                              "each characteristic's mean local importance (mean over prototypes, per image), "
                              "relative to the largest mean")
    def _null_models(self, ctx: RunContext) -> list[NullCopy]:
        """The re-initialised copies with the adapters to read them and their weight rules.

        Seeded, so every worker agrees. The copies are kept while together they fit
        :data:`~explainkit.prototypes.calibration.NULL_KEEP_BYTES`; a larger model's are rebuilt from
        their seeds one at a time in :meth:`_measure`, so that no more than one copy is alive.
        """
        if self.calibration == "none":
            return []
        seed = int(ctx.rng(self.name, "null").integers(2**31))
        order = ctx.rng(self.name, "null_cells").permutation(len(ctx.data))[:NULL_IMAGES]
        inputs = ctx.handle.preprocess(ctx.load_images(sorted(int(i) for i in order))).to(ctx.device)
        keep = model_bytes(ctx.handle.module) * int(self.null_models) <= NULL_KEEP_BYTES
        out = []
        for j in range(int(self.null_models)):
            handle = null_handle(ctx.handle, seed + j, self.null_init)
            handle.to(ctx.device)
            adapter = null_adapter(self.adapter_, handle, inputs, seed + j)
            rule = self.weight_rule_ if adapter is self.adapter_ else resolve_weight("auto", adapter)
            out.append(NullCopy(seed + j, adapter, rule, handle if keep else None))
            del handle  # before the next copy is built
        return out

    def init_state(self, ctx: RunContext) -> dict[str, Any]:
        """Empty sums of the prototypes, copies, decision changes, model explanation and the sample's bookkeeping.

        The bookkeeping: the sample's moments, its measured cost and the sampling log.
        """
        v = len(self.views_)
        return {
            **{s: SplitAccumulator.empty(len(self.prototype_ids_), v, self.n_resamples, self.sample_size)
               for s in SPLITS},
            "null": [SplitAccumulator.empty(n.adapter.num_prototypes, v, 0, 0) for n in self.nulls_],
            "decision": DecisionRows.empty(v, len(self.nulls_)),
            "moments": Moments(), "cost": (0.0, 0), "log": None,
            "model": self.explanation_.init_state() if self.explanation_ is not None else None,
            "parts": PartRows.empty(len(self.parts or ()), len(self.prototype_ids_)),
        }

    def _kind(self, ctx: RunContext) -> AdapterKind:
        """The adapter kind asked for, or the one ``auto`` detects on the model."""
        return get_adapter_kind(self.adapter if self.adapter != "auto" else detect_adapter_kind(ctx.handle.module))

    def _build_adapter(self, ctx: RunContext) -> PrototypeAdapter:
        request = AdapterRequest(ctx, self.layer or ctx.layer, self.get_params(), lambda i: self._is_train(ctx, i),
                                 lambda i: self._model_label(ctx, i))
        return self._kind(ctx).build(request)

    @staticmethod
    def _model_label(ctx: RunContext, i: int) -> int:
        """The model's class index of probe image ``i`` (matched by class name when both sides have names)."""
        label = int(ctx.data.labels[i])
        names = ctx.handle.class_names
        if label >= 0 and names and ctx.data.class_names and ctx.data.class_names[label] in names:
            return names.index(ctx.data.class_names[label])
        return label

    def _is_train(self, ctx: RunContext, i: int) -> bool:
        return bool(ctx.rng(self.name, "split", int(i)).random() < self.train_fraction)

    # ------------------------------------------------------------------ map / merge

    def map(self, ctx: RunContext, batch: Batch) -> dict[str, Any]:
        """Local importances and decision changes of the batch's sample images, for the model and each copy."""
        request = ctx.round_request(self.name)
        lo, hi = request.payload if request is not None else (0, self._schedule(len(ctx.data)).first(len(ctx.data)))
        pos = self.position_[batch.indices]
        rows = [j for j, p in enumerate(pos) if lo <= p < hi]
        if not rows:
            return self.init_state(ctx)
        t = time.perf_counter()
        state = self._measure(ctx, batch.select(rows) if len(rows) < len(batch) else batch)
        state["cost"] = (time.perf_counter() - t, len(rows))
        return state

    def _measure(self, ctx: RunContext, batch: Batch) -> dict[str, Any]:
        """Local importances and decision changes of the images, for the model and each copy, on the same views."""
        b = len(batch)
        x = LazyViews(view_images(batch.images, self.views_), ctx.handle.preprocess, ctx.device)
        labels = self._targets(ctx, batch.indices)
        step = min(ctx.handle.static_batch or ctx.rows, ctx.rows)
        scores = score_views(self.adapter_, ctx.handle, x, b, prototypes=self.prototype_ids_, readout=self.readout,
                             max_batch=step, decision=True, labels=labels)
        decision = scores.decision
        assert decision is not None
        is_train = np.array([self._is_train(ctx, i) for i in batch.indices], dtype=bool)
        state = self.init_state(ctx)
        state["moments"] = Moments.of(scores.delta[..., : len(self.perturbations_)].mean(axis=1))
        if self.explanation_ is not None:  # sees the originals and the characteristics' copies (no controls)
            c = len(self.perturbations_)
            state["model"] = self.explanation_.map(ExplanationBatch(
                ctx, batch, x[: b * (1 + c)], scores, self.prototype_ids_, self.perturbations_, self.readout,
                self.weight_rule_))
        for split, mask in (("train", is_train), ("test", ~is_train)):
            if mask.any():
                idx = batch.indices[mask]
                counts = poisson_counts([ctx.rng(self.name, "boot", int(i)) for i in idx], self.n_resamples)
                priority = np.array([ctx.rng(self.name, "sample", int(i)).random() for i in idx])
                state[split] = state[split].add(scores.subset(mask), idx, self.weight_rule_, counts, priority)
        null_dlogp = np.zeros((b, len(self.nulls_), len(self.views_)))
        for j, null in enumerate(self.nulls_):  # a rebuilt copy lives for its own scores only
            ns = score_views(null.adapter, null.handle(ctx.handle, self.null_init), x, b, readout=self.readout,
                             max_batch=step, decision=True, labels=decision.target)
            state["null"][j] = state["null"][j].add(ns, batch.indices, null.rule, np.zeros((0, b)), np.zeros(b))
            assert ns.decision is not None
            null_dlogp[:, j] = ns.decision.delta_log_prob
        state["decision"] = DecisionRows(np.asarray(batch.indices, np.int64), decision.target,
                                         decision.delta_log_prob, decision.delta_logit, null_dlogp)
        if self.parts:
            state["parts"] = self._part_rows(ctx, batch)
        return state

    def _part_rows(self, ctx: RunContext, batch: Batch) -> PartRows:
        """Part hits of the batch's images, clean and under the seeded per-image noise (EvalProtoPNet)."""
        prep = ctx.handle.require_preprocessing()
        size = tuple(batch.inputs.shape[-2:])
        masks = np.zeros((len(batch), len(self.parts or ()), *size), bool)
        for j, i in enumerate(batch.indices):
            for k, name in enumerate(self.parts or ()):
                raw = ctx.data.mask(int(i), name)
                if raw is not None:
                    masks[j, k] = prep.resize_mask(raw)
        keypoints, visible = part_keypoints(masks)
        hits = partial(prototype_part_hits, self.adapter_, ctx.handle, keypoints=keypoints, visible=visible,
                       prototypes=self.prototype_ids_, half_size=self.part_half_size)
        clean = hits(batch.inputs)
        noisy = None
        if self.part_noise > 0:
            seeds = [int(ctx.rng(self.name, "part_noise", int(i)).integers(2**31)) for i in batch.indices]
            noise = torch.stack([clipped_noise(batch.inputs.shape[1:], self.part_noise, self.part_clip,
                                               torch.Generator().manual_seed(seed)) for seed in seeds])
            noisy = hits(batch.inputs + noise.to(batch.inputs))
        labels = np.array([self._model_label(ctx, int(i)) if ctx.data.has_labels else -1 for i in batch.indices])
        return PartRows(np.asarray(batch.indices, np.int64), labels, visible, clean, noisy)

    def _targets(self, ctx: RunContext, indices: np.ndarray) -> np.ndarray | None:
        """Target class per image in the model's output order (-1: the predicted class)."""
        if self.target == "predicted" or not ctx.data.has_labels:
            return None
        return np.array([self._model_label(ctx, int(i)) for i in indices], np.int64)

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Merge split by split, copy by copy, the per-image rows, the model explanation, moments and costs.

        The sampling log is the planner's (set on the merged state by :meth:`next_round`).
        """
        return {**{s: a[s].merge(b[s]) for s in SPLITS},
                "null": [x.merge(y) for x, y in zip(a["null"], b["null"])],
                "decision": a["decision"].merge(b["decision"]),
                "model": self.explanation_.merge(a["model"], b["model"]) if self.explanation_ is not None else None,
                "parts": a["parts"].merge(b["parts"]),
                "moments": a["moments"].merge(b["moments"]),
                "cost": (a["cost"][0] + b["cost"][0], a["cost"][1] + b["cost"][1]), "log": a["log"] or b["log"]}

    def _widths(self, moments: Moments) -> list[float]:
        """CI half-widths of the characteristics' means relative to the largest |mean|."""
        if moments.n < 2:
            return [np.inf]
        scale = float(np.max(np.abs(moments.mean())))
        return (moments.half_width() / scale).tolist() if scale > 0 else [np.inf]

    def next_round(self, ctx: RunContext, state: dict[str, Any], number: int, allowance_s: float | None
                   ) -> RoundRequest | None:
        """The next stage of the image sample while the characteristics' means are not precise enough."""
        n_all = len(ctx.data)
        n = state["train"].n + state["test"].n
        state["log"] = state["log"] or SampleLog()
        seconds, done = state["cost"]
        size = self._schedule(n_all).advance(state["log"], n, self._widths(state["moments"]), n_all,
                                             cost_per_image=seconds / done if done else None, allowance_s=allowance_s)
        if size is None:
            return None
        return RoundRequest(tuple(sorted(int(i) for i in self.order_[n:size])), (n, size))

    # ------------------------------------------------------------------ finalize

    def finalize(self, ctx: RunContext, state: dict[str, Any]) -> Section:
        """Scores, tests, generalisation, redundancy, verdicts, images, headline, the model's own explanation."""
        names = [p.name for p in self.perturbations_]
        c = len(names)
        scores = {s: _first_columns(global_scores(state[s]), c) for s in SPLITS}
        primary = "train" if state["train"].n else "test"
        sample = state["test"].sample if len(state["test"].sample) else state[primary].sample
        if sample.delta is not None:
            sample = dataclasses.replace(sample, delta=sample.delta[..., :c])
        tests = local_tests(sample.delta) if len(sample) else None
        unit = self.adapter_.unit
        seed = int(ctx.rng(self.name, "ranking").integers(2**31))
        proto = prototype_relevance(state["train"].merge(state["test"]), state["null"], names, self.control_pairs_,
                                    seed=seed, alpha=self.alpha)
        decision = decision_relevance(state["decision"], names, self.control_pairs_, proto["profile"],
                                      proto["profiles"], alpha=self.alpha)
        records = [self._record(j, names, scores, tests, unit, ctx, proto) for j in range(len(self.prototype_ids_))]
        ranking = self._ranking(scores[primary], names, unit, ctx)
        both = state["train"].n > 1 and state["test"].n > 1
        general = generalisation(scores["train"].score, scores["test"].score, names) if both else None
        redundancy = self._redundancy(scores[primary], records)
        shown = self._shown(scores[primary], state[primary])
        assets: dict[str, str] = {}
        for j in shown:
            records[j]["assets"] = self._prototype_assets(ctx, j, state[primary], assets)
            records[j]["chart"] = _chart([(f"{c} ({split})", records[j][f"global_{split}"][c])
                                          for c in names for split in SPLITS if state[split].n])
        local = self._local_examples(ctx, sample, names, unit, assets)
        significant = int(np.sum(tests["q"] < self.alpha)) if tests is not None else 0
        relies = _headline(decision["overall"], DECISION_UNIT, "the model relies", len(self.nulls_))
        responds = _headline(proto["comparison"], CALIBRATED_UNIT, "its prototypes respond", len(self.nulls_), "to")
        # n: the prototypes in the decision-weighted mean (a prototype with no weight on any image is left out)
        calibrated_ranking = _comparison_rows(proto["comparison"], CALIBRATED_UNIT,
                                              int(np.count_nonzero(proto["weights"] > 0)))
        decision_data = self._decision_data(decision, ctx, relies)
        summary = {
            "prototypes": len(records), "adapter": self.adapter_.kind,
            "top_characteristic": relies["characteristic"] if relies["status"] == "ahead" else None,
            "headline": relies["statement"], "relies_on": relies, "prototypes_respond_to": responds,
            "significant_pairs": significant,
            "train_test_rank_correlation": _rho_metric(general["pooled"]) if general else None,
        }
        data = {
            "adapter": self.adapter_.describe(), "characteristics": names,
            "perturbations": [p.describe() for p in self.perturbations_],
            "readout": self.readout, "weight": self.weight_rule_, "primary_split": primary,
            "splits": {s: {"n_images": state[s].n, "local_sample": len(state[s].sample)} for s in SPLITS},
            "sampling": self._schedule(len(ctx.data)).report(state["log"], state["train"].n + state["test"].n,
                                                             self._widths(state["moments"]), len(ctx.data)),
            "units": {"local": f"{unit} (original − perturbed, at the original best location)",
                      "relative": "fraction of the original similarity (relative drop)",
                      "global": f"{unit}, {self.weight_rule_}-weighted mean of local importances over a split",
                      "calibrated": CALIBRATED_UNIT, "decision": DECISION_UNIT},
            "calibration": self._calibration_data(proto, names),
            "decision": decision_data,
            "calibrated_ranking": calibrated_ranking,
            "calibrated_chart": _chart([(r["characteristic"], r["value"]) for r in calibrated_ranking]),
            "decision_chart": _chart([(r["characteristic"], r["value"]) for r in decision_data["overall"]["ranking"]]),
            "ranking": ranking, "ranking_chart": _chart([(r["characteristic"], r["value"]) for r in ranking]),
            "table_rows": TABLE_ROWS, "prototypes": records, "generalisation": general, "redundancy": redundancy,
            "local_examples": local, "shown": shown, "notes": self._notes(),
        }
        if self.parts:
            data["parts"] = self._part_data(ctx, state["parts"])
            summary["part_consistency"] = data["parts"]["consistency"]
        if self.explanation_ is not None:  # the model's own explanation (prototype models only)
            data["model_explanation"] = self.explanation_.section(
                ExplanationContext(ctx, records, self.prototype_ids_, names, unit, assets), state["model"])
        return self.section(summary=summary, data=data, findings=self._findings(records, relies, responds, redundancy),
                            assets=assets)

    def _part_data(self, ctx: RunContext, rows: PartRows) -> dict[str, Any]:
        """EvalProtoPNet scores over the run's images (own-class images of class prototypes, all for shared ones)."""
        classes = [self.adapter_.prototype_class(p) for p in self.prototype_ids_]
        own = np.stack([np.ones_like(rows.labels, bool) if c is None else rows.labels == c for c in classes], axis=1)
        scores = part_scores(rows.hits, rows.visible, own, rows.noisy, threshold=self.part_threshold,
                             n_resamples=max(self.n_resamples, 1000),
                             seed=int(ctx.rng(self.name, "parts").integers(2**31)))
        out = scores.to_json(list(self.parts or ()), self.prototype_ids_)
        out["params"] = {"threshold": self.part_threshold, "half_size": self.part_half_size, "noise": self.part_noise,
                         "clip": self.part_clip, "keypoint": "part-mask centroid at the input size",
                         "reference": "Huang et al. 2023 (EvalProtoPNet)"}
        return out

    def _calibration_data(self, proto: dict[str, Any], names: list[str]) -> dict[str, Any]:
        profiles = proto["profiles"]
        k = profiles.shape[0]
        null_profile = {name: metric(proto["profile"][i] if k else None, _t_interval(profiles[:, i]) if k > 1 else None,
                                     n=k, unit="re-initialised copies' mean |local change| of the characteristic / "
                                     "their mean over characteristics", higher_is_better=None)
                        for i, name in enumerate(names)}
        factor = {p.name: p.params.get("factor") for p in self.perturbations_}
        return {
            "method": self.calibration, "null_models": len(self.nulls_), "null_init": self.null_init,
            "null_adapter": self.nulls_[0].adapter.describe() if self.nulls_ else None,
            "controls": [{"characteristic": names[k], "control": self.views_[j].name, "factor": factor[names[k]]}
                         for k, j in self.control_pairs_],
            "null_profile": null_profile,
            "model_sensitivity": metric(proto["sensitivity"], n=None, unit=f"{self.adapter_.unit} (the model's "
                                        "mean |local change| over characteristics)", higher_is_better=None),
            "decision_weights": "gradient × activation" if self.adapter_.kind == "channels" else (
                "last-layer weight × similarity" if getattr(self.adapter_, "head_weight", None) is not None
                else "equal (no link from the prototypes to the decision)"),
        }

    def _decision_data(self, decision: dict[str, Any], ctx: RunContext, relies_headline: dict[str, Any]
                       ) -> dict[str, Any]:
        names = [p.name for p in self.perturbations_]
        class_names = ctx.class_names
        views = [p.name for p in self.views_]
        labels = [*views[: len(names)], *(f"{v} (control)" for v in views[len(names):])]
        per_class = []
        for g, k in enumerate(decision["classes"]):
            n = int(decision["counts"][g])
            comp = decision["per_class"][g]
            raw = {key: {label: metric(decision[key][g, i], _se_interval(decision[key][g, i],
                                                                          decision[f"{key}_se"][g, i], n),
                                       n=n, unit=unit, higher_is_better=None)
                         for i, label in enumerate(labels)}
                   for key, unit in (("raw_log_prob", "nats (drop of log p(target))"),
                                     ("raw_logit", "logit (drop of the target logit)"))}
            per_class.append({
                "class": int(k), "class_name": class_names[k] if 0 <= k < len(class_names) else None, "n": n,
                "ranking": _comparison_rows(comp, DECISION_UNIT, n),
                "headline": _headline(comp, DECISION_UNIT, "for this class the model relies", len(self.nulls_)),
                "log_prob_drop": raw["raw_log_prob"], "logit_drop": raw["raw_logit"],
            })
        overall = decision["overall"]
        n_all = int(np.sum(decision["counts"]))
        return {"target": self.target, "unit": DECISION_UNIT, "per_class": per_class,
                "overall": {"ranking": _comparison_rows(overall, DECISION_UNIT, n_all),
                            "headline": relies_headline,
                            "n": n_all}}

    def _record(self, j: int, names: list[str], scores: dict[str, GlobalScores], tests: dict | None, unit: str,
                ctx: RunContext, proto: dict[str, Any]) -> dict[str, Any]:
        pid = self.prototype_ids_[j]
        cls = self.adapter_.prototype_class(pid)
        class_names = ctx.class_names
        rec: dict[str, Any] = {
            "prototype": pid, "class": cls,
            "class_name": class_names[cls] if cls is not None and cls < len(class_names) else None,
        }
        primary = scores["train"] if scores["train"].n else scores["test"]
        rec["verdict"] = verdict(primary.score[j], primary.ci_low[j], names)
        for split in SPLITS:
            g = scores[split]
            rec[f"global_{split}"] = {c: metric(g.score[j, k], (g.ci_low[j, k], g.ci_high[j, k]), n=g.n, unit=unit,
                                                higher_is_better=None) for k, c in enumerate(names)}
            rec[f"relative_{split}"] = {c: metric(g.relative[j, k], n=g.n, unit="fraction of original similarity",
                                                  higher_is_better=None) for k, c in enumerate(names)}
            rec[f"mean_weight_{split}"] = _float(g.mean_weight[j])
        rec["calibrated"] = {c: metric(proto["calibrated"][j, k], (proto["ci_low"][j, k], proto["ci_high"][j, k]),
                                       n=scores["train"].n + scores["test"].n, unit=CALIBRATED_UNIT,
                                       higher_is_better=None) for k, c in enumerate(names)}
        rec["decision_weight"] = _float(proto["weights"][j])
        if tests is not None:
            rec["tests"] = {c: {"n": int(tests["n"][j, k]), "median": _float(tests["median"][j, k]),
                                "effect_size": _float(tests["effect_size"][j, k]),
                                "W_plus": _float(tests["statistic"][j, k]), "p": _float(tests["p"][j, k]),
                                "q": _float(tests["q"][j, k]), "significant": bool(tests["q"][j, k] < self.alpha)}
                            for k, c in enumerate(names)}
        return rec

    def _ranking(self, g: GlobalScores, names: list[str], unit: str, ctx: RunContext) -> list[dict[str, Any]]:
        """Characteristics by their mean global importance over prototypes (bootstrap CI over prototypes)."""
        seed = int(ctx.rng(self.name, "ranking").integers(2**31))
        rows = []
        for k, c in enumerate(names):
            v = g.score[:, k][np.isfinite(g.score[:, k])]
            mean = float(v.mean()) if v.size else None
            top_share = float(np.mean(np.nanargmax(np.where(np.isfinite(g.score), g.score, -np.inf), 1) == k)) \
                if np.isfinite(g.score).any() else None
            rows.append({"characteristic": c,
                         "value": metric(mean, bootstrap_ci(v, seed=seed) if v.size > 1 else None, n=int(v.size),
                                         unit=f"{unit} (mean over prototypes)", higher_is_better=None),
                         "share_top": top_share})
        return sorted(rows, key=lambda r: -np.inf if r["value"]["value"] is None else -r["value"]["value"])

    def _redundancy(self, g: GlobalScores, records: list[dict[str, Any]]) -> dict[str, Any]:
        ids = np.asarray(self.prototype_ids_)
        vectors = self.adapter_.vectors()
        vec_groups = [] if vectors is None else redundancy_groups(vectors[ids].numpy(), self.redundancy_tolerance)
        expl_groups = redundancy_groups(g.score, self.redundancy_tolerance)

        def named(groups: list[list[int]]) -> list[list[int]]:
            return [[int(ids[i]) for i in grp] for grp in groups]

        for label, groups in (("vector_group", vec_groups), ("explanation_group", expl_groups)):
            for n, grp in enumerate(groups):
                for i in grp:
                    records[i][label] = n
        return {"tolerance": self.redundancy_tolerance,
                "rule": "every member within relative distance |a − b| / max(|a|, |b|) <= tolerance of the group's "
                        "first prototype",
                "vector_groups": named(vec_groups), "explanation_groups": named(expl_groups),
                "vectors_available": vectors is not None}

    def _shown(self, g: GlobalScores, acc: SplitAccumulator) -> list[int]:
        """Positions of the prototypes shown with images: the most present ones that have a top image."""
        order = np.argsort(-np.nan_to_num(g.mean_weight, nan=-np.inf), kind="stable")
        return [int(j) for j in order if acc.best_index[j] >= 0][: self.max_shown]

    def _prototype_assets(self, ctx: RunContext, j: int, acc: SplitAccumulator, assets: dict[str, str]
                          ) -> dict[str, Any]:
        pid = self.prototype_ids_[j]
        index = int(acc.best_index[j])
        image = ctx.load_images([index])[0]
        box = prototype_box(self.adapter_, ctx.handle, image, pid)
        context = with_box(ctx.handle.require_preprocessing().resize_image(image), box)
        keys = [f"p{pid}_{v}" for v in ("patch", *(p.name for p in self.perturbations_))]
        for key, uri in zip(keys, views(ctx.handle, image, self.perturbations_, box, PATCH_SIDE)):
            assets[key] = uri
        assets[f"p{pid}_context"] = to_data_uri(thumbnail(context, VIEW_SIDE))
        return {"patch": keys[0], "perturbed": dict(zip([p.name for p in self.perturbations_], keys[1:])),
                "context": f"p{pid}_context", "image": ctx.data.ids[index], "box": list(box),
                "similarity": _float(acc.best_similarity[j])}

    def _local_examples(self, ctx: RunContext, sample: Any, names: list[str], unit: str, assets: dict[str, str]
                        ) -> list[dict[str, Any]]:
        """Local explanations of the first test images of the seeded sample: their most similar prototypes."""
        if not len(sample) or not self.local_images:
            return []
        chosen = np.lexsort((sample.index, sample.priority))[: self.local_images]
        out = []
        for row in chosen:
            index = int(sample.index[row])
            image = ctx.load_images([index])[0]
            top = np.argsort(-sample.similarity[row], kind="stable")[:3]
            box = prototype_box(self.adapter_, ctx.handle, image, self.prototype_ids_[int(top[0])])
            key = f"local{index}"
            uris = views(ctx.handle, image, self.perturbations_, None, VIEW_SIDE)
            assets[key] = to_data_uri(thumbnail(with_box(ctx.handle.require_preprocessing().resize_image(image), box),
                                                VIEW_SIDE))
            for name, uri in zip(names, uris[1:]):
                assets[f"{key}_{name}"] = uri
            rel = relative_drop(sample.delta[row], sample.similarity[row])
            out.append({
                "image": ctx.data.ids[index], "index": index, "asset": key,
                "perturbed": {n: f"{key}_{n}" for n in names}, "box": list(box),
                "prototypes": [{"prototype": self.prototype_ids_[int(j)],
                                "similarity": _float(sample.similarity[row, j]),
                                "delta": {n: _float(sample.delta[row, j, k]) for k, n in enumerate(names)},
                                "relative": {n: _float(rel[j, k]) for k, n in enumerate(names)},
                                "verdict": verdict(sample.delta[row, j], np.full(len(names), np.nan), names)}
                               for j in top],
                "unit": unit,
            })
        return out

    def _findings(self, records: list[dict[str, Any]], relies: dict[str, Any], responds: dict[str, Any],
                  redundancy: dict[str, Any]) -> list[Finding]:
        counts: dict[str, int] = {}
        for r in records:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        findings = [
            Finding("info", relies["statement"], self.name, {"headline": relies}),
            Finding("info", responds["statement"], self.name, {"headline": responds, "verdicts": counts}),
        ]
        groups = redundancy["vector_groups"] + redundancy["explanation_groups"]
        if groups:
            findings.append(Finding(
                "info",
                f"{len(redundancy['vector_groups'])} group(s) of near-identical prototype vectors and "
                f"{len(redundancy['explanation_groups'])} group(s) of near-identical explanations: candidates for "
                "pruning or merging",
                self.name, {"vector_groups": redundancy["vector_groups"][:20],
                            "explanation_groups": redundancy["explanation_groups"][:20]},
            ))
        return findings

    def _notes(self) -> str:
        return (
            "Local importance = similarity at the prototype's best location in the original image minus the "
            f"similarity at that location after perturbing one characteristic ({self.readout} read-out); positive: "
            "the prototype relies on the characteristic. Global importance = weighted mean of local importances over "
            f"all images of a split (weight: {self.weight_rule_}); 95% CIs from a Poisson bootstrap over images. "
            f"Seeded split: each image is 'train' with probability {self.train_fraction}. Per-prototype tests: "
            "one-sided Wilcoxon signed-rank of the local importances of up to "
            f"{self.sample_size} 'test' images, Benjamini–Hochberg across prototypes × characteristics. "
            "Generalisation: Welch's t-test of train vs test global scores per characteristic (the reference's test; "
            "Holm across characteristics) and Spearman's rank correlation of the two. Relative drops are a separate "
            "view in units of the original similarity. A prototype with no weight on any image (one that never "
            "activates, such as a dead channel) has null importances (verdict: no clear characteristic) and is left "
            "out of the rankings and the headline."
        )


def _float(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _chart(rows: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Rows and range for ``macros.bar_chart`` from (label, metric) pairs; the range always includes 0."""
    out = [{"label": label, "value": m["value"], "low": m["ci_low"], "high": m["ci_high"]} for label, m in rows]
    ends = [v for r in out for v in (r["value"], r["low"], r["high"]) if v is not None]
    lo, hi = min([0.0, *ends]), max([0.0, *ends])
    return {"rows": out, "lo": lo, "hi": hi if hi > lo else lo + 1.0}


def _rho_metric(r: dict[str, Any]) -> dict[str, Any]:
    return metric(r["rho"], (r["ci_low"], r["ci_high"]) if r["ci_low"] is not None else None, n=r["n"],
                  unit="Spearman rho", higher_is_better=True, p=r["p"])


def _first_columns(g: GlobalScores, c: int) -> GlobalScores:
    """The global scores of the C characteristics (drops the control views)."""
    return dataclasses.replace(g, score=g.score[:, :c], ci_low=g.ci_low[:, :c], ci_high=g.ci_high[:, :c],
                               relative=g.relative[:, :c])


def _t_interval(v: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of a few values."""
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return (float(v.mean()) - half, float(v.mean()) + half)


def _se_interval(mean: float, se: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval from a mean and its standard error."""
    if n < 2:
        return None
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * se)
    return (float(mean) - half, float(mean) + half)


def _comparison_rows(comp: NullComparison, unit: str, n: int) -> list[dict[str, Any]]:
    """Characteristics by calibrated value: the value (CI), the model's raw statistic and the copies' mean."""
    rows = []
    for i in comp.order:
        rows.append({"characteristic": comp.names[i],
                     "value": metric(comp.value[i], (comp.ci_low[i], comp.ci_high[i]), n=n, unit=unit,
                                     higher_is_better=None),
                     "model": _float(comp.model[i]),
                     "null_mean": _float(comp.null[:, i].mean()) if comp.null.shape[0] else None})
    return rows


def _headline(comp: NullComparison, unit: str, subject: str, n_null: int, preposition: str = "on") -> dict[str, Any]:
    """The headline in words, only as strong as the test allows (see :func:`compare_with_null`).

    ``subject`` and ``preposition`` start the sentence ("the model relies" "on"); ``n_null`` re-initialised
    copies were compared.
    """
    top = comp.order[0]
    first = comp.names[top]
    value = f"{comp.value[top]:.3g} [{comp.ci_low[top]:.3g}, {comp.ci_high[top]:.3g}] {SHORT_UNITS[unit]}"
    comparisons = [{**c, "difference": metric(c["difference"], (c["ci_low"], c["ci_high"]), unit=unit,
                                              higher_is_better=None)} for c in comp.comparisons]
    for c in comparisons:
        c.pop("ci_low")
        c.pop("ci_high")

    def diff(c: dict[str, Any]) -> str:
        d = c["difference"]
        return (f"{first} − {c['other']} = {d['value']:.3g} [{d['ci_low']:.3g}, {d['ci_high']:.3g}], "
                f"Holm p = {c['p_holm']:.2g}")

    against = f"against {n_null} re-initialised copies of the architecture" if n_null else "(uncalibrated)"
    if comp.status == "none":
        statement = (f"{subject} {preposition} no characteristic {against}: the largest value, {first} {value}, is not "
                     "significantly above 0")
    elif comp.status == "ahead":
        runner = comparisons[0] if comparisons else None
        statement = f"{subject} most {preposition} {first} ({value}" + (f"; {diff(runner)})" if runner else ")")
    else:
        tied = [c for c in comparisons if not c["significant"]]
        statement = (f"{subject} {preposition} no single characteristic: {' and '.join(comp.tied)} tie "
                     f"({first} {value}; " + "; ".join(diff(c) for c in tied) + ")")
    return {"status": comp.status, "characteristic": first if comp.status != "none" else None,
            "tied": comp.tied, "statement": statement, "comparisons": comparisons,
            "correction": f"Holm over the {len(comparisons)} comparisons of the first with each other characteristic"}


class PrototypeRegions(Analyzer):
    """Prototype meaning of a segmentation model, each prototype read on its class's region.

    The per-class-region analysis of :mod:`explainkit.prototypes.regions` streamed over the run: every
    prototype is read only on the ground-truth pixels of its class (the probe set's label maps),
    with the Nauta perturbations, similarity-weighted global means with bootstrap CIs on a seeded
    train/test split, Wilcoxon tests with Benjamini-Hochberg correction and verdicts, plus the
    model's own explanation when its adapter has one (ScaleProtoSeg: scale groups, sparse groups,
    which prototypes and scale groups drive each predicted class).

    Parameters
    ----------
    adapter : str
        ``"auto"`` (the model's own kind) or a registered adapter kind whose prototypes have classes.
    layer : str, optional
        Latent layer (default: the kind's own).
    prototypes : list of int, optional
        Analyse only these prototypes.
    characteristics : list of str
        Perturbed characteristics.
    min_fraction : float
        A latent cell belongs to a class region when at least this fraction of its pixels does.
    readout, weight, train_fraction, n_resamples, sample_size, alpha
        As for the ``prototypes`` analyzer.
    examples : int
        Images whose per-pixel drivers the model explanation lists.
    """

    name = "prototype_regions"
    title = "Prototype meaning per class region (segmentation)"
    summary = "what each segmentation prototype responds to on its own class's pixels (Nauta et al. 2021, per region)"
    requires = frozenset({"module_hooks", "images", "label_maps"})
    tasks = frozenset({"segmentation"})
    run_by_default = True
    options: ClassVar[Mapping[str, Option]] = {
        "adapter": Option("choice", choices=lambda: ("auto", *list_adapter_kinds()),
                          help="how prototypes are read from the model (a registered adapter kind)"),
        "layer": Option("str", help="latent layer (default: the adapter kind's own)"),
        "prototypes": Option("int", low=0, many=True, help="analyse only these prototypes (default all)"),
        "characteristics": Option("choice", choices=CHARACTERISTICS, many=True, help="perturbed characteristics"),
        "min_fraction": Option("float", low=0, high=1, low_open=True,
                               help="share of a latent cell's pixels that puts it in a class region"),
        "readout": Option("choice", choices=("fixed", "max"), help="'fixed' (reference) or 'max', within the region"),
        "weight": Option("choice", choices=WEIGHTS, help="weight of the global mean"),
        "train_fraction": Option("float", low=0, high=1, low_open=True, high_open=True,
                                 help="share of images in the seeded 'train' split"),
        "n_resamples": Option("int", low=50, help="Poisson-bootstrap resamples for the CIs of global scores"),
        "sample_size": Option("int", low=5, help="images per split whose local scores are kept for the tests"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="level of the per-prototype tests (after Benjamini-Hochberg)"),
        "examples": Option("int", low=0, help="images whose per-pixel drivers the model explanation lists"),
    }

    def __init__(self, adapter: str = "auto", layer: str | None = None, prototypes: list[int] | None = None,
                 characteristics: tuple[str, ...] = DEFAULT_CHARACTERISTICS, min_fraction: float = 0.5,
                 readout: str = "fixed", weight: str = "auto", train_fraction: float = 0.5, n_resamples: int = 200,
                 sample_size: int = 256, alpha: float = 0.05, examples: int = 2) -> None:
        self.adapter = adapter
        self.layer = layer
        self.prototypes = prototypes
        self.characteristics = characteristics
        self.min_fraction = min_fraction
        self.readout = readout
        self.weight = weight
        self.train_fraction = train_fraction
        self.n_resamples = n_resamples
        self.sample_size = sample_size
        self.alpha = alpha
        self.examples = examples

    def _kind(self, ctx: RunContext) -> AdapterKind:
        return get_adapter_kind(self.adapter if self.adapter != "auto" else detect_adapter_kind(ctx.handle.module))

    def validate(self, ctx: RunContext) -> None:
        """The label maps are there and the layer exists."""
        if not ctx.data.has_label_maps:
            raise ConfigError("prototype_regions: needs a probe set with label maps (labels/<image stem>.png)")
        if self.layer is not None:
            resolve_layer(ctx.handle.module, self.layer)
        kind = self._kind(ctx)
        if kind.name in CLASSLESS_KINDS:
            raise ConfigError(f"prototype_regions: {kind.name!r} prototypes belong to no class, so there is no class "
                              "region to read them on; it reads prototype segmentation models (adapter="
                              "scaleprotoseg) or class-specific prototype vectors (adapter=vectors)")

    def prepare(self, ctx: RunContext) -> None:
        """The adapter (its prototypes need classes) and the region analysis."""
        request = AdapterRequest(ctx, self.layer, {"model_options": None}, lambda i: True, lambda i: -1)
        adapter = self._kind(ctx).build(request)
        if all(adapter.prototype_class(p) is None for p in range(adapter.num_prototypes)):
            raise ConfigError(f"prototype_regions: the {adapter.kind!r} prototypes have no classes, so no class "
                              "region to read them on")
        self.run_ = RegionAnalysis(adapter, self.characteristics, self.prototypes, self.min_fraction, self.readout,
                                   self.weight, self.train_fraction, self.n_resamples, self.sample_size, self.alpha,
                                   ctx.seed, self.examples)

    def init_state(self, ctx: RunContext) -> Any:
        """No image yet."""
        return self.run_.empty()

    def map(self, ctx: RunContext, batch: Batch) -> Any:
        """Region-restricted local importances of the batch (and the model explanation's sums)."""
        maps = [ctx.data.label_map(int(i)) for i in batch.indices]
        return self.run_.measure(ctx.handle, batch.images, maps, batch.indices, ctx.handle.require_preprocessing(),
                                 ctx.device)

    def merge(self, a: Any, b: Any) -> Any:
        """Sum the streamed states."""
        return self.run_.merge(a, b)

    def finalize(self, ctx: RunContext, state: Any) -> Section:
        """Per prototype its class, scale, verdict and global scores; the model's own explanation."""
        def load(i: int) -> tuple[Any, Any]:
            return ctx.data.load_image(i), ctx.data.label_map(i)

        data = self.run_.report(state, ctx.handle, load, ctx.handle.require_preprocessing(), ctx.class_names,
                                ctx.device)
        verdicts = [r["verdict"] for r in data["prototypes"]]
        summary = {"prototypes": len(verdicts), "adapter": self.run_.adapter.kind,
                   "images": sum(v["n_images"] for v in data["splits"].values())}
        return self.section(summary=summary, data=data)
