"""``dissect``: Network Dissection labels for every unit of a layer.

Per batch, the layer's (B, D, h, w) unit maps (from the runner's shared pass) feed a mergeable
state (each unit's largest values, the maps that may exceed its final threshold and those images'
concept masks;
:mod:`~explainkit.dissect.tally`) and the concept masks' pixel counts are recorded. At the end the
exact top-quantile thresholds are fixed, the kept maps are upsampled and binarised, and every unit
gets the concept of largest IoU (label when the IoU exceeds 0.04), with a delta-method CI and a
selection-corrected test. The ``reliability`` analyzer puts these labels next to INVERT's.

JSON section (``data``): ``concepts`` (name, mask source, pixels, images), ``layers`` (per layer:
``map_size``, ``units``: label, best concept, IoU metric with CI and test, threshold, runners-up,
top images), ``artifact_units``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from explainkit.adapters.activations import LOGITS, build_poolers, check_layers, layer_names
from explainkit.analyzers.base import Analyzer, Batch, Finding, PassRequest, RunContext, Section, layer_request
from explainkit.analyzers.metric import metric
from explainkit.data.probe import TASKS
from explainkit.dissect.labels import UnitLabel
from explainkit.dissect.masks import MaskReader, mask_sources
from explainkit.dissect.stream import DissectRunState, label_layer, map_batch
from explainkit.dissect.tally import DissectState, Tally, upsample
from explainkit.errors import ConfigError
from explainkit.options import Option
from explainkit.report.images import thumbnail, to_data_uri
from explainkit.report.jsonify import jsonable

__all__ = ["NetworkDissection"]

_THUMB_PX = 64


class UnitMapAnalyzer(Analyzer):
    """An analyzer that reads the unit maps of its layers from the shared pass into a :class:`DissectRunState`.

    Subclasses set ``poolers_`` (layer readers), ``reader_`` (the probe set's concept masks) and
    ``quantile`` before the first batch; ``pooled_means`` says whether the state also keeps each
    unit's spatial mean per image (INVERT's input).
    """

    pooled_means: ClassVar[bool] = True

    def init_state(self, ctx: RunContext) -> DissectRunState:
        """No layer seen yet."""
        return DissectRunState()

    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """The layers' outputs, recorded by the runner's shared pass."""
        return layer_request(self.poolers_)

    def map(self, ctx: RunContext, batch: Batch) -> DissectRunState:
        """Unit maps (from the shared pass) and concept masks into each layer's state."""
        return map_batch(batch.layer_values(self.poolers_, spatial=True), batch.indices,
                         [im.size for im in batch.images], self.reader_, len(ctx.data), self.quantile,
                         pooled=self.pooled_means)


class NetworkDissection(UnitMapAnalyzer):
    """Network Dissection (Bau et al., CVPR 2017).

    Parameters
    ----------
    layer : str or list of str, optional
        Layer(s) with spatial maps (conv blocks, ViT blocks with a patch grid). Default: the run's
        ``--layer``, else the model's last spatial layer.
    quantile : float
        Top share of each unit's activations (over images and positions) that fires it (reference 0.005).
    iou_threshold : float
        A unit is labelled when its best IoU exceeds this (reference 0.04).
    concepts : list of str, optional
        Concepts to score; default every concept-table column and every mask folder.
    regions : dict of str to str, optional
        Concept → mask folder it covers (``"~folder"``: the complement), for table concepts without
        pixel masks; overrides ``"region"`` entries of ``descriptions.json``.
    alpha : float
        False discovery rate of the label test over a layer's units.
    top_images : int
        Top-activating images (with the unit's mask) per shown unit.
    max_image_units : int
        Units per layer that get images (confirmed labels first, by IoU).
    """

    name = "dissect"
    pooled_means = False  # INVERT reads its own pooled pass; dissect needs the maps only
    title = "Network Dissection"
    summary = ("labels conv units with the concept whose masks best overlap their top-0.5% activations "
               "(Bau et al. 2017), with IoU CIs and tests")
    requires = frozenset({"module_hooks", "masks"})
    tasks = frozenset(TASKS)  # reads layer activations and masks only, never the outputs
    options: ClassVar[Mapping[str, Option]] = {
        "layer": Option("str", many=True, or_one=True,
                        help="layer(s) with spatial maps (default: the run's --layer, else the model's)"),
        "quantile": Option("float", low=0, high=0.5, low_open=True, high_open=True,
                           help="top share of a unit's activations (all images and positions) that fires it"),
        "iou_threshold": Option("float", low=0, high=1, high_open=True, help="a unit is labelled above this IoU"),
        "concepts": Option("str", many=True, help="concepts to score (default: every table column and mask folder)"),
        "regions": Option("mapping", help="concept -> mask folder it covers ('~folder': the complement)"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="false discovery rate of the label test over a layer's units"),
        "top_images": Option("int", low=0, help="top images (with the unit's mask) per shown unit"),
        "max_image_units": Option("int", low=0, help="units per layer that get images"),
    }

    def __init__(self, layer: str | list[str] | None = None, quantile: float = 0.005, iou_threshold: float = 0.04,
                 concepts: list[str] | None = None, regions: dict[str, str] | None = None, alpha: float = 0.05,
                 top_images: int = 3, max_image_units: int = 8) -> None:
        self.layer = layer
        self.quantile = quantile
        self.iou_threshold = iou_threshold
        self.concepts = concepts
        self.regions = regions
        self.alpha = alpha
        self.top_images = top_images
        self.max_image_units = max_image_units

    # -- setup -------------------------------------------------------------------------------
    def validate(self, ctx: RunContext) -> None:
        """Every concept needs a mask source; the layers asked for must exist."""
        try:
            mask_sources(ctx.data, self.concepts, self.regions)
            check_layers(ctx.handle, self.layer, ctx.layer)
            if LOGITS in layer_names(ctx.handle, self.layer, ctx.layer, default=False):
                raise ConfigError("the logits have no spatial maps; pick a layer with unit maps")
        except ConfigError as exc:
            raise ConfigError(f"dissect: {exc}") from None

    def prepare(self, ctx: RunContext) -> None:
        """Resolve layers and mask sources; a mask reader for the probe set."""
        self.sources_ = mask_sources(ctx.data, self.concepts, self.regions)
        self.poolers_ = build_poolers(ctx.handle, layer_names(ctx.handle, self.layer, ctx.layer))
        self.reader_ = MaskReader(ctx.data, ctx.handle.require_preprocessing(), self.sources_)

    def finalize(self, ctx: RunContext, state: DissectRunState) -> Section:
        """Tally and label every layer, build the section."""
        names = [s.concept for s in self.sources_]
        layers, assets, artifact_units = [], {}, []
        artifacts = set(ctx.data.artifact_concepts)
        label_pixels = None
        for li, (layer, lstate) in enumerate(state.layers.items()):
            counts, labels = label_layer(state, layer, names, quantile=self.quantile,
                                         iou_threshold=self.iou_threshold, alpha=self.alpha)
            label_pixels = counts.label_pixels
            shown = self._image_units(labels)
            thumbs = self._thumbnails(ctx, lstate, counts, shown, f"l{li}", assets)
            record = self._layer_record(layer, lstate, labels, thumbs)
            layers.append(record)
            artifact_units += [{"layer": layer, **u} for u in record["units"]
                               if u["dissect"]["confirmed"] and u["dissect"]["label"] in artifacts]
        concepts = [{"name": s.concept, "source": s.kind, "origin": s.describe(),
                     "pixels": int(label_pixels[:, c].sum()) if label_pixels is not None else 0,
                     "images": int((label_pixels[:, c] > 0).sum()) if label_pixels is not None else 0}
                    for c, s in enumerate(self.sources_)]
        return self._section(layers, concepts, artifact_units, assets)

    def _image_units(self, labels: list[UnitLabel]) -> list[int]:
        ranked = sorted(labels, key=lambda u: (not u.confirmed, u.label is None, -u.iou, u.unit))
        return [u.unit for u in ranked[: self.max_image_units] if u.unit_pixels > 0]

    def _thumbnails(self, ctx: RunContext, lstate: DissectState, counts: Tally, units: list[int], prefix: str,
                    assets: dict[str, str]) -> dict[int, list[str]]:
        """Top images of each shown unit with its binarised mask tinted red (the reference's view)."""
        out: dict[int, list[str]] = {}
        if self.top_images == 0:
            return out
        prep = ctx.handle.require_preprocessing()
        for u in units:
            rows = np.flatnonzero(lstate.pair_unit == u)
            rows = rows[np.argsort(-lstate.pair_peak[rows], kind="stable")][: self.top_images]
            up = upsample(torch.from_numpy(lstate.pair_map[rows]), self.reader_.size) > float(counts.thresholds[u])
            keys = []
            for rank, (row, mask) in enumerate(zip(rows, up.numpy())):
                view = np.asarray(prep.resize_image(ctx.data.load_image(int(lstate.pair_image[row]))), np.float32)
                tint = np.where(mask[..., None], 0.45 * view + 0.55 * np.array([230.0, 40.0, 40.0]), 0.55 * view)
                key = f"{prefix}_u{u}_{rank}"
                assets[key] = to_data_uri(thumbnail(Image.fromarray(tint.round().astype(np.uint8)), _THUMB_PX),
                                          "jpeg", quality=85)
                keys.append(key)
            out[u] = keys
        return out

    def _iou_metric(self, u: UnitLabel, n: int) -> dict[str, Any]:
        return metric(u.iou, (u.ci_low, u.ci_high), n=n, unit="IoU", higher_is_better=True, p=u.p,
                      p_selection=u.p_selection, q=u.q, ci_method="delta method over images",
                      test=f"one-sided z-test of IoU > {self.iou_threshold}")

    def _layer_record(self, layer: str, lstate: DissectState, labels: list[UnitLabel],
                      thumbs: dict[int, list[str]]) -> dict[str, Any]:
        n = int(lstate.images.size)
        units = [{"unit": u.unit, "name": u.name,
                  "dissect": {"label": u.label, "best": u.best, "iou": self._iou_metric(u, n),
                              "confirmed": u.confirmed, "threshold": u.threshold,
                              "unit_pixels": u.unit_pixels, "runners_up": u.runners_up},
                  "top_images": thumbs.get(u.unit, [])} for u in labels]
        return {"layer": layer, "map_size": list(lstate.map_size), "n_units": len(labels), "n_images": n,
                "n_labelled": sum(u.label is not None for u in labels),
                "n_confirmed": sum(u.confirmed for u in labels), "units": units}

    def _section(self, layers: list[dict], concepts: list[dict], artifact_units: list[dict],
                 assets: dict[str, str]) -> Section:
        findings = []
        for layer in layers:
            found = [a for a in artifact_units if a["layer"] == layer["layer"]]
            if found:
                top = max(found, key=lambda a: a["dissect"]["iou"]["value"])
                iou = top["dissect"]["iou"]
                findings.append(Finding(
                    "warning",
                    f"{len(found)} unit(s) of layer '{layer['layer']}' are labelled with artifact concept(s) "
                    f"{', '.join(sorted({a['dissect']['label'] for a in found}))} by Network Dissection; e.g. unit "
                    f"{top['name']} IoU {iou['value']:.3f} [95% CI {iou['ci_low']:.3f}, {iou['ci_high']:.3f}], "
                    f"q={iou['q']:.2g}", self.name,
                    {"layer": layer["layer"], "units": [a["unit"] for a in found]}))
        total = sum(layer["n_units"] for layer in layers)
        summary = {"units": total, "labelled": sum(layer["n_labelled"] for layer in layers),
                   "confirmed": sum(layer["n_confirmed"] for layer in layers),
                   "artifact_units": len(artifact_units)}
        data = {
            "method": "Network Dissection (Bau et al., CVPR 2017): per unit, the top-quantile activation threshold "
                      "over all images and positions (exact), maps upsampled bilinearly to the mask resolution and "
                      "binarised, dataset-wide IoU with every concept mask; label = best IoU above the threshold",
            "quantile": self.quantile, "iou_threshold": self.iou_threshold,
            "decision": {"alpha": self.alpha, "ci": "delta method over images, 95%",
                         "test": f"one-sided z-test of IoU > {self.iou_threshold}",
                         "correction": "Bonferroni over the concepts (the label is the best of them), then "
                                       "Benjamini-Hochberg over the units of each layer",
                         "rule": "confirmed if q < alpha"},
            "concepts": concepts, "layers": layers, "artifact_units": artifact_units,
            "notes": "Network Dissection needs pixel masks and asks where a unit fires (INVERT, which needs image "
                     "labels, asks which images make it fire; the reliability analyzer shows both labels of each "
                     "unit side by side). Concepts without pixel masks count as covering the whole image where the "
                     "concept table marks them (as the reference treats scene labels).",
        }
        return self.section(summary=jsonable(summary), data=jsonable(data), findings=findings, assets=assets)
