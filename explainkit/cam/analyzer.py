"""Analyzers ``gradcam`` (class-activation maps) and ``captum`` (input-level attributions).

Both explain every probe image with several methods and evaluate the maps the same way:

* per image: pointing game and energy share for every mask folder of the probe set (e.g. the
  synthetic world's ``object`` and the planted ``stamp``);
* on a deterministic subset (``metric_images``): deletion / insertion AUC, Average Drop and
  Increase in Confidence, and the "better than random" test (the method's insertion − deletion
  against ``n_random`` random maps of the same spatial structure, one-sided Wilcoxon, Holm across
  methods); ROAD on a smaller subset (``road_images``);
* once, in ``finalize``: the model-parameter randomisation sanity check on ``sanity_images``.

``gradcam`` needs module hooks and gradients. ``captum`` needs gradients only (Occlusion not even
those), so TorchScript models still get explanations and the same metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.adapters import SpatialLayout, default_layer, resolve_layers
from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.cam import baseline, metrics, render
from explainkit.cam.api import CamResult, compute, plan_methods
from explainkit.cam.engine import CamRun
from explainkit.cam.methods import METHODS, get_method, method_choices
from explainkit.cam.sanity import parameter_randomization
from explainkit.errors import CapabilityError, ConfigError
from explainkit.options import Option
from explainkit.samples import write_samples
from explainkit.stats import adjust_pvalues, bootstrap_ci, wilson_interval

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


@dataclass(frozen=True)
class _Selection:
    examples: tuple[int, ...]
    metrics: frozenset[int]
    road: frozenset[int]
    sanity: tuple[int, ...]


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
        Images (deterministic subset, examples first) for deletion / insertion, Average Drop and
        the random-map test.
    road_images : int
        Images for ROAD (a prefix of the metric subset).
    steps : int
        Deletion / insertion steps.
    road_levels : sequence of float
        Fractions removed by ROAD.
    n_random : int
        Random maps per image for the "better than random" test (0 disables it, else at least 10).
    sanity : bool
        Run the parameter-randomisation sanity check.
    sanity_images : int
        Images for the sanity check.
    sanity_steps : int
        Cascade groups of the sanity check.
    sanity_threshold : float
        Spearman correlation regarded as "unchanged".
    n_examples : int
        Example images shown in the report (half of them with an artifact concept, if any).
    pointing_tolerance : float, optional
        Pointing-game radius in input pixels (default: 15 px at 224 px, scaled).
    batch_size : int, optional
        Rows per extra forward pass (default: the run's batch size).
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
        "metric_images": Option("int", low=0, help="images for deletion/insertion, Average Drop, random-map test"),
        "road_images": Option("int", low=0, help="images for ROAD (a prefix of the metric images)"),
        "steps": Option("int", low=1, help="deletion / insertion steps"),
        "road_levels": Option("float", low=0, high=1, low_open=True, high_open=True, many=True,
                              help="fractions removed by ROAD"),
        "n_random": Option("int", low=0, help="random maps per image for the random-map test (0: off, else >= 10)"),
        "sanity": Option("bool", help="run the parameter-randomisation sanity check"),
        "sanity_images": Option("int", low=0, help="images for the sanity check"),
        "sanity_steps": Option("int", low=1, help="cascade groups of the sanity check"),
        "sanity_threshold": Option("float", low=-1, high=1, help="Spearman correlation regarded as unchanged"),
        "n_examples": Option("int", low=0, help="example images shown in the report"),
        "pointing_tolerance": Option("float", low=0, help="pointing-game radius in input pixels "
                                                          "(default: 15 px at 224 px, scaled)"),
        "batch_size": Option("int", low=1, help="rows per extra forward pass (default: the run's batch size)"),
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
                 metric_images: int = 24, road_images: int = 6, steps: int = 8,
                 road_levels: Sequence[float] = (0.2, 0.5, 0.8), n_random: int = 10, sanity: bool = True,
                 sanity_images: int = 6, sanity_steps: int = 3, sanity_threshold: float = 0.5,
                 n_examples: int = 6, pointing_tolerance: float | None = None, batch_size: int | None = None,
                 n_resamples: int = 1000, save_maps: bool = True, grid: Sequence[int] | None = None,
                 prefix_tokens: int | None = None, layout: str = "auto") -> None:
        self.methods = methods
        self.layer = layer
        self.target = target
        self.method_params = method_params
        self.metric_images = metric_images
        self.road_images = road_images
        self.steps = steps
        self.road_levels = road_levels
        self.n_random = n_random
        self.sanity = sanity
        self.sanity_images = sanity_images
        self.sanity_steps = sanity_steps
        self.sanity_threshold = sanity_threshold
        self.n_examples = n_examples
        self.pointing_tolerance = pointing_tolerance
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

    def _plan(self) -> list[tuple[Any, dict[str, Any]]]:
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
            size = ctx.handle.require_preprocessing().input_size
            cached = (id(ctx.handle.module), default_layer(ctx.handle.module, tuple(size)))
            self.default_layer_ = cached
        return cached[1]

    def _batch_size(self, ctx: RunContext) -> int:
        return int(self.batch_size or ctx.batch_size)

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
        if self.target == "label" and not ctx.data.has_labels:
            raise ConfigError(f"{self.name}: target='label' needs a labelled probe set")
        if self.n_random != 0 and self.n_random < 10:
            raise ConfigError(f"{self.name}: n_random must be 0 (off) or at least 10, not {self.n_random!r}")
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
        """Find the target layer now: a model without a spatial layer fails here, before any batch."""
        self._layer(ctx)

    # -- deterministic image choices ----------------------------------------------------------
    def _selection(self, ctx: RunContext) -> _Selection:
        key = (id(ctx.data), len(ctx.data), ctx.seed)
        cached = getattr(self, "selection_", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        n = len(ctx.data)
        order = [int(i) for i in ctx.rng(self.name, "select").permutation(n)]
        flagged = np.zeros(n, dtype=bool)
        if ctx.data.concepts is not None:
            for name in ctx.data.artifact_concepts:
                flagged |= ctx.data.concepts[:, ctx.data.concept_index(name)]
        k = int(self.n_examples)
        if flagged.any():
            half = (k + 1) // 2
            ex = [i for i in order if flagged[i]][:half]
            ex += [i for i in order if not flagged[i]][: k - len(ex)]
        else:
            ex = order[:k]
        taken = set(ex)
        ranked = ex + [i for i in order if i not in taken]
        chosen = ranked[: int(self.metric_images)]
        sel = _Selection(examples=tuple(sorted(ex)), metrics=frozenset(chosen),
                         road=frozenset(chosen[: int(self.road_images)]),
                         sanity=tuple(sorted(chosen[: int(self.sanity_images)])) if self.sanity else ())
        self.selection_ = (key, sel)
        return sel

    # -- map ------------------------------------------------------------------------------------
    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Maps, pointing game, and (for the chosen images) faithfulness metrics of one batch."""
        sel = self._selection(ctx)
        prep = ctx.handle.require_preprocessing()
        logits = batch.logits.detach().float()
        classes = logits.argmax(1).cpu()
        if self.target == "label":
            labels = batch.labels.cpu()
            classes = torch.where(labels >= 0, labels, classes)
        probs = torch.softmax(logits, 1).cpu().gather(1, classes[:, None])[:, 0]
        res = compute(ctx.handle, batch.inputs, methods=self._methods(), layer=self._layer(ctx),
                      targets=classes.tolist(), params=self.method_params, batch_size=self._batch_size(ctx),
                      seed=ctx.seed, layout=self._spatial_layout())
        if self.save_maps:
            write_samples(ctx.out_dir, self.name, batch.ids,
                          **{m: render.quantize(maps.cpu().numpy()) for m, maps in res.maps.items()})
        pointing = self._pointing(ctx, batch, res, prep)
        faith = self._faithfulness(ctx, batch, res, classes, sel)
        records = []
        for j, i in enumerate(int(v) for v in batch.indices):
            rec: dict[str, Any] = {
                "cls": int(classes[j]), "prob": float(probs[j]), "label": int(batch.labels[j]),
                "pointing": {m: {mask: (float(v["hit"][j]), float(v["energy"][j])) for mask, v in per.items()}
                             for m, per in pointing.items()},
                "metrics": faith.get(j),
                "grid": {m: res.grid(m) for m in res.maps},
                "example": None,
            }
            if i in sel.examples:
                rec["example"] = {"view": render.input_view(batch.images[j], prep),
                                  "maps": {m: render.quantize(res.maps[m][j].cpu().numpy()) for m in res.maps}}
            records.append(rec)
        return RecordState.from_batch(batch.indices, rec=records)

    def _pointing(self, ctx: RunContext, batch: Batch, res: CamResult, prep: Any
                  ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        out: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {} for m in res.maps}
        for mask_name in ctx.data.mask_names():
            masks = []
            for i in batch.indices:
                raw = ctx.data.mask(int(i), mask_name)
                masks.append(None if raw is None else prep.resize_mask(raw))
            for m, maps in res.maps.items():
                out[m][mask_name] = metrics.pointing_game(maps, masks, tolerance=self.pointing_tolerance)
        return out

    def _faithfulness(self, ctx: RunContext, batch: Batch, res: CamResult, classes: torch.Tensor,
                      sel: _Selection) -> dict[int, dict[str, Any]]:
        rows = [j for j, i in enumerate(batch.indices) if int(i) in sel.metrics]
        if not rows:
            return {}
        bs = self._batch_size(ctx)
        sub = torch.tensor(rows)
        run = CamRun.for_classes(ctx.handle, batch.inputs[sub.to(batch.inputs.device)], classes[sub].tolist(),
                                 batch_size=bs, seed=ctx.seed)
        road_rows = [k for k, j in enumerate(rows) if int(batch.indices[j]) in sel.road]
        out: dict[int, dict[str, Any]] = {j: {"values": {}, "random": {}} for j in rows}
        for m, maps in res.maps.items():
            sub_maps = maps[sub.to(maps.device)]
            di = metrics.deletion_insertion(run, sub_maps, steps=int(self.steps))
            ad = metrics.average_drop(run, sub_maps)
            rd = self._road(run, sub_maps, road_rows, ctx.seed)
            for k, j in enumerate(rows):
                vals = {"deletion": di["deletion"][k], "insertion": di["insertion"][k],
                        "faithfulness": di["insertion"][k] - di["deletion"][k],
                        "average_drop": ad["drop"][k], "increase": ad["increase"][k]}
                vals.update({key: arr[k] for key, arr in rd.items()})
                out[j]["values"][m] = {key: float(v) for key, v in vals.items()}
        if self.n_random:
            keys = [int(batch.indices[j]) for j in rows]
            for grid in {res.grid(m) for m in res.maps}:
                rand = baseline.random_maps(keys, grid, run.size, int(self.n_random), seed=ctx.seed)
                scores = np.stack([self._rise_score(run, rand[r]) for r in range(rand.shape[0])], axis=1)
                for k, j in enumerate(rows):
                    out[j]["random"][f"{grid[0]}x{grid[1]}"] = [float(v) for v in scores[k]]
        return out

    def _rise_score(self, run: CamRun, maps: torch.Tensor) -> np.ndarray:
        di = metrics.deletion_insertion(run, maps, steps=int(self.steps))
        return di["insertion"] - di["deletion"]

    def _road(self, run: CamRun, maps: torch.Tensor, rows: list[int], seed: int) -> dict[str, np.ndarray]:
        n = maps.shape[0]
        out = {key: np.full(n, np.nan) for key in ("road_morf", "road_lerf", "road_combined")}
        if not rows:
            return out
        idx = torch.tensor(rows, device=maps.device)
        rd = metrics.road(run.subset(rows), maps[idx], levels=self.road_levels, seed=seed)
        for key, src in (("road_morf", "morf_mean"), ("road_lerf", "lerf_mean"), ("road_combined", "combined")):
            out[key][rows] = rd[src]
        return out

    # -- finalize -------------------------------------------------------------------------------
    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """Summaries with CIs, the random-map test, the sanity check, examples and findings."""
        recs: list[dict[str, Any]] = state.column("rec")
        indices = [int(i) for i in state.indices()]
        methods = self._methods()
        seed = int(ctx.rng(self.name, "bootstrap").integers(0, 2**31))
        masks = ctx.data.mask_names()
        per_image = {m: {key: np.array([r["metrics"]["values"][m][key] if r["metrics"] else np.nan for r in recs])
                         for key in METRICS} for m in methods}
        summary_rows: dict[str, dict[str, Any]] = {}
        for m in methods:
            row = {key: self._metric(per_image[m][key], METRICS[key], seed) for key in METRICS}
            row["pointing"] = {mask: self._pointing_summary(recs, m, mask, seed) for mask in masks}
            row["vs_random"] = self._vs_random(recs, m, per_image[m]["faithfulness"], seed)
            summary_rows[m] = row
        self._holm(summary_rows)
        sanity = self._sanity(ctx, recs, indices) if self.sanity else None
        section_methods = []
        for m in methods:
            method = get_method(m)
            section_methods.append({"name": m, "title": method.title, "kind": method.kind,
                                    "grid": list(next(r["grid"][m] for r in recs)) if recs else None,
                                    **summary_rows[m],
                                    "sanity": None if sanity is None else sanity["methods"][m]})
        examples, assets = self._examples(ctx, recs, indices, methods)
        findings = self._findings(ctx, section_methods)
        best = max(section_methods, key=lambda r: _value(r["faithfulness"]), default=None)
        failed = [r["name"] for r in section_methods if r["sanity"] and r["sanity"]["verdict"] == "FAIL"]
        weak = [r["name"] for r in section_methods if r["vs_random"] and not r["vs_random"]["significant"]]
        layer = self._layer(ctx)
        data = {
            "layer": layer if isinstance(layer, str) or layer is None else list(layer),
            "target": "predicted class" if self.target == "predicted" else "true label",
            "methods": section_methods,
            "metric_definitions": {k: {"label": label, "unit": unit, "higher_is_better": hib}
                                   for k, (label, unit, hib) in METRICS.items()},
            "masks": masks,
            "artifact_masks": [m for m in masks if m in ctx.data.artifact_concepts],
            "examples": examples,
            "sanity": None if sanity is None else {k: v for k, v in sanity.items() if k != "methods"},
            "per_image": {"ids": [ctx.data.ids[i] for i in indices], "class": [r["cls"] for r in recs],
                          "probability": [r["prob"] for r in recs],
                          "metrics": {m: {k: v.tolist() for k, v in per_image[m].items()} for m in methods},
                          "pointing": {mask: {m: [r["pointing"][m][mask][0] for r in recs] for m in methods}
                                       for mask in masks}},
            "notes": _NOTES,
            "maps_folder": f"samples/{self.name}" if self.save_maps and ctx.out_dir is not None else None,
        }
        summary = {
            "methods": len(methods),
            "best_method": best["name"] if best else None,
            "best_insertion_minus_deletion": best["faithfulness"] if best else None,
            "sanity_failures": ", ".join(failed) or "none",
            "not_better_than_random": ", ".join(weak) or "none",
        }
        return self.section(summary=summary, data=data, findings=findings, assets=assets)

    def _metric(self, values: np.ndarray, spec: tuple[str, str, bool], seed: int) -> dict[str, Any]:
        ok = values[np.isfinite(values)]
        ci = bootstrap_ci(ok, n_resamples=int(self.n_resamples), seed=seed) if ok.size > 1 else None
        return metric(float(ok.mean()) if ok.size else None, ci, n=int(ok.size), unit=spec[1],
                      higher_is_better=spec[2], label=spec[0])

    def _pointing_summary(self, recs: list[dict[str, Any]], method: str, mask: str, seed: int) -> dict[str, Any]:
        hits = np.array([r["pointing"][method][mask][0] for r in recs])
        energy = np.array([r["pointing"][method][mask][1] for r in recs])
        ok = hits[np.isfinite(hits)]
        n, k = int(ok.size), int(ok.sum())
        return {"hit_rate": metric(k / n if n else None, wilson_interval(k, n) if n else None, n=n,
                                   unit="fraction of images with the mask", higher_is_better=None,
                                   ci_method="Wilson"),
                "energy": self._metric(energy, ("energy inside the mask", "fraction of map mass", True), seed)}

    def _vs_random(self, recs: list[dict[str, Any]], method: str, score: np.ndarray, seed: int
                   ) -> dict[str, Any] | None:
        if not self.n_random:
            return None
        rows = [k for k, r in enumerate(recs) if r["metrics"] and np.isfinite(score[k])]
        if len(rows) < 2:
            return None
        grid = recs[rows[0]]["grid"][method]
        rand = np.array([recs[k]["metrics"]["random"][f"{grid[0]}x{grid[1]}"] for k in rows])
        out = baseline.better_than_random(score[rows], rand, n_resamples=int(self.n_resamples), seed=seed)
        out["score"] = "insertion AUC − deletion AUC"
        out["random_grid"] = list(grid)
        return out

    @staticmethod
    def _holm(rows: dict[str, dict[str, Any]]) -> None:
        names = [m for m, r in rows.items() if r["vs_random"] is not None]
        p = np.array([np.nan if rows[m]["vs_random"]["p"] is None else rows[m]["vs_random"]["p"] for m in names])
        adjusted = adjust_pvalues(p, "holm")
        for m, q in zip(names, adjusted):
            test = rows[m]["vs_random"]
            test["p_holm"] = float(q) if np.isfinite(q) else None
            test["correction"] = f"Holm over {len(names)} methods"
            test["significant"] = bool(np.isfinite(q) and q < 0.05)

    def _sanity(self, ctx: RunContext, recs: list[dict[str, Any]], indices: list[int]) -> dict[str, Any] | None:
        chosen = [i for i in self._selection(ctx).sanity if i in set(indices)]
        if not chosen:
            return None
        pos = {i: k for k, i in enumerate(indices)}
        images = ctx.load_images(chosen)
        inputs = ctx.handle.preprocess(images).to(ctx.device)
        return parameter_randomization(
            ctx.handle, inputs, methods=self._methods(), classes=[recs[pos[i]]["cls"] for i in chosen],
            layer=self._layer(ctx), params=self.method_params, steps=int(self.sanity_steps),
            threshold=float(self.sanity_threshold), batch_size=self._batch_size(ctx), seed=ctx.seed,
            n_resamples=int(self.n_resamples), layout=self._spatial_layout())

    def _examples(self, ctx: RunContext, recs: list[dict[str, Any]], indices: list[int], methods: list[str]
                  ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        names = list(ctx.class_names)
        examples, assets = [], {}
        for n, (i, r) in enumerate((i, r) for i, r in zip(indices, recs) if r["example"] is not None):
            key = f"ex{n}"
            assets[f"{key}_input"] = render.view_uri(r["example"]["view"])
            for m in methods:
                assets[f"{key}_{m}"] = render.overlay_uri(r["example"]["view"], r["example"]["maps"][m])
            concepts = []
            if ctx.data.concepts is not None:
                concepts = [c for c, v in zip(ctx.data.concept_names, ctx.data.concepts[i]) if v]
            examples.append({
                "id": ctx.data.ids[i], "input": f"{key}_input",
                "overlays": [{"method": m, "asset": f"{key}_{m}"} for m in methods],
                "explained_class": _name(names, r["cls"]), "probability": r["prob"],
                "label": _name(names, r["label"]) if r["label"] >= 0 else None,
                "artifacts": [c for c in concepts if c in ctx.data.artifact_concepts],
                "metrics": {m: {**(r["metrics"]["values"][m] if r["metrics"] else {}),
                                **{f"points_at_{mask}": v[0] for mask, v in r["pointing"][m].items()}}
                            for m in methods},
            })
        return examples, assets

    def _findings(self, ctx: RunContext, rows: list[dict[str, Any]]) -> list[Finding]:
        out = []
        for r in rows:
            if r["sanity"] and r["sanity"]["verdict"] == "FAIL":
                out.append(Finding("warning", f"{r['title']} fails the weight-randomisation sanity check: "
                                   f"{r['sanity']['reason']}", self.name, {"method": r["name"]}))
            test = r["vs_random"]
            if test and not test["significant"]:
                adv = test["advantage"]
                out.append(Finding(
                    "warning", f"{r['title']} is not better than random maps of the same resolution on "
                    f"insertion − deletion (mean advantage {_fmt(adv['value'])} [95% CI {_fmt(adv['ci_low'])}, "
                    f"{_fmt(adv['ci_high'])}], Holm p={_fmt(test['p_holm'])}, n={test['n']})",
                    self.name, {"method": r["name"], "test": test}))
        for mask in (m for m in ctx.data.mask_names() if m in ctx.data.artifact_concepts):
            hit = rows[0]["pointing"][mask]["hit_rate"] if rows else None
            if hit and hit["ci_low"] is not None and hit["ci_low"] > 0.5:
                out.append(Finding(
                    "warning", f"{rows[0]['title']} peaks on the artifact '{mask}' in {hit['value']:.0%} of the "
                    f"{hit['n']} images that carry it [95% CI {hit['ci_low']:.0%}, {hit['ci_high']:.0%}]: the model "
                    "appears to rely on it", self.name,
                    {"mask": mask, "hit_rate": {r["name"]: r["pointing"][mask]["hit_rate"] for r in rows}}))
        return out


def _value(m: dict[str, Any]) -> float:
    return m["value"] if m and m["value"] is not None else float("-inf")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _name(names: list[str], c: int) -> str:
    return names[c] if 0 <= c < len(names) else str(c)


_NOTES = (
    "Maps explain the class named per image (its logit); perturbation metrics read its softmax probability. "
    "Deletion/insertion (RISE): pixels ranked by the map are replaced by zeros of the normalised input "
    "(deletion) or restored into a blurred copy (insertion); AUC over the fraction changed. Average Drop and "
    "Increase in Confidence multiply the normalised input by the map. ROAD removes the most (MoRF) / least "
    "(LeRF) relevant pixels with noisy linear imputation; combined = (LeRF − MoRF)/2. Pointing game: hit when "
    "the map's maximum lies within the tolerance of the mask (Wilson CI). All other CIs: 95% percentile "
    "bootstrap over images. Metrics use a deterministic subset of images (n in each cell)."
)


class GradCam(_AttributionAnalyzer):
    """Class-activation maps (Grad-CAM family) with faithfulness metrics and sanity checks."""

    name = "gradcam"
    title = "Class-activation maps (Grad-CAM family)"
    summary = ("Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, EigenCAM (+ Score-/Ablation-CAM, Smooth "
               "Grad-CAM++ on request) with deletion/insertion, ROAD, pointing game, random-map test, sanity check")
    requires = frozenset({"module_hooks", "gradients"})
    run_by_default = True
    method_kinds = ("gradient", "activation", "noise", "perturbation", "backward")


class CaptumAttributions(_AttributionAnalyzer):
    """Input-level attributions from captum (also for TorchScript models), with the same metrics."""

    name = "captum"
    title = "Input attributions (captum)"
    summary = ("Saliency and Integrated Gradients (+ SmoothGrad, Occlusion, GradientSHAP on request) without "
               "module hooks, with the gradcam analyzer's metrics")
    requires = frozenset({"gradients"})
    run_by_default = True
    method_kinds = ("input",)
