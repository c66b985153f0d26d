"""The ``segmentation`` and ``multilabel`` analyzers: task metrics with bootstrap CIs, and CAMs per region / label.

``segmentation`` (a probe set with label maps, a model giving (B, K, H, W) scores): the predicted
class of a pixel is the arg-max of the scores, upsampled bilinearly to the input size when the model
gives them coarser; the truth is the label map brought into the input's geometry as the image is
(nearest-neighbour resize and the same crop, :meth:`Preprocessing.resize_label_map`), so the metrics
are those of the pixels the model sees. Pixels labelled 255 are not counted.

``multilabel`` (a multi-hot ``labels.csv``, a model giving (B, K) sigmoid logits): average precision
per label from the logits, F1 of the decision ``sigmoid(logit) > threshold``.

Both map model outputs to the probe set's classes by name (the model's class names), else by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from explainkit.adapters import MultiLabelTarget, SegmentationTarget, default_layer, resolve_layer
from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.cam import render
from explainkit.cam.methods import method_choices
from explainkit.data.probe import LABEL_IGNORE
from explainkit.errors import CapabilityError, DataError
from explainkit.options import Option
from explainkit.tasks.multilabel import multilabel_scores
from explainkit.tasks.regions import RegionMaps, example_indices, explain_regions, localise, render_examples
from explainkit.tasks.segmentation import class_counts, confusion_matrix, segmentation_scores

__all__ = ["MultiLabelQuality", "SegmentationQuality"]

_CAM_OPTIONS: Mapping[str, Option] = {
    "n_examples": Option("int", low=0, help="example images explained per class region / positive label (0: no CAMs)"),
    "methods": Option("choice", choices=method_choices, many=True, or_one=True, help="CAM methods of the examples"),
    "layer": Option("str", help="CAM target layer (default: the run's --layer, else the model's last spatial layer)"),
}


def _output_columns(ctx: RunContext) -> np.ndarray:
    """Model output index of each probe-set class: by name when the model has names, else by position."""
    probe, model = ctx.data.class_names or (), ctx.handle.class_names
    if not model:
        return np.arange(len(probe), dtype=np.int64)
    missing = [c for c in probe if c not in model]
    if missing:
        raise DataError(f"probe classes not among the model's class names: {', '.join(missing[:5])}")
    return np.array([model.index(c) for c in probe], dtype=np.int64)


class _RegionCams(Analyzer):
    """What both analyzers share: parameters of the example CAMs, layer, example images, report parts."""

    salt: ClassVar[str] = ""

    def validate(self, ctx: RunContext) -> None:
        """CAMs need module hooks and gradients."""
        if self.n_examples and not {"module_hooks", "gradients"} <= ctx.handle.capabilities:
            raise CapabilityError(f"{self.name}: CAMs of the examples need module hooks and gradients, which this "
                                  f"{ctx.handle.format.value} model does not provide; set n_examples=0")

    def prepare(self, ctx: RunContext) -> None:
        """Output columns of the probe classes, the CAM layer and the example images."""
        self.columns_ = _output_columns(ctx)
        self.layer_ = None
        if self.n_examples:
            layer = self.layer or ctx.layer or default_layer(
                ctx.handle.module, tuple(ctx.handle.require_preprocessing().input_size))
            self.layer_ = resolve_layer(ctx.handle.module, layer)[0]
        self.examples_ = example_indices(ctx, int(self.n_examples), self.salt)

    def _names(self, ctx: RunContext, k: int) -> list[str]:
        names = list(ctx.class_names)
        return names + [str(i) for i in range(len(names), k)]

    def _cam_parts(self, ctx: RunContext, state: RecordState, names: list[str], seed: int
                   ) -> tuple[dict[str, Any], dict[str, str], list[Finding]]:
        examples = [ex for ex in state.column("cams") if ex is not None]
        records, assets = render_examples(examples, ctx.data.ids, names)
        table = localise(examples, names, n_resamples=self.n_resamples, seed=seed) if examples else []
        findings = [Finding("warning", f"{r['method']} maps of {r['label']} do not localise its true region: energy "
                            f"inside {r['energy']['value']:.2f} [95% CI {r['energy']['ci_low']:.2f}, "
                            f"{r['energy']['ci_high']:.2f}], not above chance {r['chance_energy']:.2f} "
                            f"(n={r['energy']['n']} maps)", self.name, {"method": r["method"], "label": r["label"]})
                    for r in table
                    if r["energy"]["ci_high"] is not None and r["energy"]["ci_high"] <= r["chance_energy"]]
        data = {"layer": self.layer_, "methods": list(self.methods) if self.n_examples else [],
                "localisation": table, "examples": records}
        return data, assets, findings


class SegmentationQuality(_RegionCams):
    """mIoU, per-class IoU and pixel accuracy with bootstrap CIs over images; CAMs of each class in its region.

    Parameters
    ----------
    n_resamples : int
        Bootstrap resamples (images with replacement) of every CI.
    iou_warning : float
        A class whose IoU CI upper bound is below this becomes a warning.
    n_examples : int
        Example images whose classes are each explained inside their true region
        (:class:`explainkit.SegmentationTarget`: the class's scores summed over the region).
    methods : list of str
        CAM methods of the examples.
    layer : str, optional
        CAM target layer.
    """

    name = "segmentation"
    title = "Segmentation quality"
    summary = "mIoU, per-class IoU, pixel accuracy with bootstrap CIs; CAMs of each class in its true region"
    requires = frozenset({"label_maps"})
    tasks = frozenset({"segmentation"})
    run_by_default = True
    salt = "segmentation-examples"
    options: ClassVar[Mapping[str, Option]] = {
        "n_resamples": Option("int", low=100, help="bootstrap resamples (over images) of every CI"),
        "iou_warning": Option("float", low=0, high=1, help="a class whose IoU CI upper bound is below this "
                                                           "becomes a warning"),
        **_CAM_OPTIONS,
    }

    def __init__(self, n_resamples: int = 2000, iou_warning: float = 0.5, n_examples: int = 4,
                 methods: Sequence[str] = ("gradcam",), layer: str | None = None) -> None:
        self.n_resamples = n_resamples
        self.iou_warning = iou_warning
        self.n_examples = n_examples
        self.methods = methods
        self.layer = layer

    def prepare(self, ctx: RunContext) -> None:
        """Also the lookup from label-map values to model outputs (255 stays 255)."""
        super().prepare(ctx)
        self.lookup_ = np.full(256, LABEL_IGNORE, dtype=np.int64)
        self.lookup_[: len(self.columns_)] = self.columns_

    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Per image: class counts and the non-zero cells of the pixel confusion matrix; region CAMs of examples."""
        scores = batch.logits.detach().float()
        size = tuple(batch.inputs.shape[-2:])
        if tuple(scores.shape[-2:]) != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        pred = scores.argmax(1).cpu().numpy()
        k = int(scores.shape[1])
        prep = ctx.handle.require_preprocessing()
        counts, cells, cams = [], [], []
        for j, i in enumerate(int(i) for i in batch.indices):
            truth = self.lookup_[prep.resize_label_map(ctx.data.label_map(i))]
            if truth[truth != LABEL_IGNORE].max(initial=0) >= k:
                raise DataError(f"label map of {ctx.data.ids[i]} names class {int(truth.max())}; the model has {k}")
            conf = confusion_matrix(pred[j], truth, k)
            counts.append(class_counts(conf))
            cells.append(np.column_stack([*np.nonzero(conf), conf[conf > 0]]))  # (m, 3): true, predicted, pixels
            cams.append(self._explain(ctx, batch, j, truth) if i in self.examples_ else None)
        return RecordState.from_batch(batch.indices, counts=np.stack(counts), cells=cells, cams=cams)

    def _explain(self, ctx: RunContext, batch: Batch, j: int, truth: np.ndarray) -> RegionMaps | None:
        classes = [int(c) for c in np.unique(truth) if c != LABEL_IGNORE]
        if not classes:
            return None
        regions = torch.from_numpy(np.stack([truth == c for c in classes]))
        out = tuple(batch.logits.shape[-2:])
        target_masks = regions if tuple(regions.shape[-2:]) == out else \
            F.interpolate(regions[:, None].float(), size=out, mode="nearest")[:, 0] > 0.5
        x = batch.inputs[j : j + 1].expand(len(classes), *batch.inputs.shape[1:])
        _, maps = explain_regions(ctx, x, SegmentationTarget(classes, target_masks), methods=self.methods,
                                  layer=self.layer_)
        view = render.input_view(batch.images[j], ctx.handle.require_preprocessing())
        return RegionMaps(int(batch.indices[j]), classes, maps, list(regions.numpy()), view)

    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """IoU per class, mIoU, pixel accuracy with CIs; the localisation of the region CAMs."""
        seed = int(ctx.rng(self.name).integers(0, 2**31))
        s = segmentation_scores(state.stacked("counts"), n_resamples=self.n_resamples, seed=seed)
        k = s.counts.shape[1]
        confusion = np.zeros((k, k), np.int64)
        for cell in state.column("cells"):
            np.add.at(confusion, (cell[:, 0], cell[:, 1]), cell[:, 2])
        names = self._names(ctx, k)
        n = s.n_images
        per_class = [{"class": names[c], "support_pixels": int(s.counts[1, c]),
                      "predicted_pixels": int(s.counts[2, c]), "in_mean": bool(s.counted[c]),
                      "iou": metric(s.iou[c], (s.iou_ci[0, c], s.iou_ci[1, c]), n=n, unit="IoU",
                                    higher_is_better=True)}
                     for c in range(len(names)) if s.counted[c] or c in set(self.columns_.tolist())]
        miou = metric(s.miou, s.miou_ci, n=n, unit="IoU", higher_is_better=True,
                      classes=int(s.counted.sum()))
        acc = metric(s.pixel_accuracy, s.pixel_accuracy_ci, n=n, unit="fraction of pixels", higher_is_better=True,
                     pixels=s.n_pixels)
        findings = [Finding("warning", f"class {r['class']} is segmented poorly: IoU {r['iou']['value']:.2f} "
                            f"[95% CI {r['iou']['ci_low']:.2f}, {r['iou']['ci_high']:.2f}] (n={n} images), below "
                            f"{self.iou_warning:g}", self.name, {"class": r["class"], "iou": r["iou"]})
                    for r in per_class if r["support_pixels"] and r["iou"]["ci_high"] is not None
                    and r["iou"]["ci_high"] < self.iou_warning]
        cams, assets, cam_findings = self._cam_parts(ctx, state, names, seed)
        section = self.section(
            summary={"miou": miou, "pixel_accuracy": acc},
            data={"miou": miou, "pixel_accuracy": acc, "per_class": per_class,
                  "confusion": {"classes": names, "matrix": confusion.tolist(), "rows": "true class",
                                "columns": "predicted class", "unit": "pixels"},
                  "cams": cams,
                  "notes": f"IoU = TP / (TP + FP + FN) of the pixel confusion matrix summed over the {n} images "
                           f"(ignore value {LABEL_IGNORE} not counted), at the model's input geometry; mIoU over "
                           "the classes present in truth or prediction; 95% percentile bootstrap CIs over images "
                           f"({self.n_resamples} resamples, seeded); CAMs explain each class's scores summed over "
                           "its true region (SegmentationTarget) on the example images, scored by the pointing "
                           "game and the energy inside that region against chance"},
            findings=findings + cam_findings)
        section.assets.update(assets)
        return section


class MultiLabelQuality(_RegionCams):
    """mAP, per-label AP and F1 at a threshold with bootstrap CIs over images; CAMs of each positive label.

    Parameters
    ----------
    n_resamples : int
        Bootstrap resamples (images with replacement) of every CI.
    threshold : float
        A label is predicted when its sigmoid probability is above this (F1, and which labels the
        example CAMs explain).
    n_examples : int
        Example images whose predicted labels are each explained
        (:class:`explainkit.adapters.MultiLabelTarget`: every positive label in turn); with masks named
        after a label (``masks/<label>/``), the maps are scored against them.
    methods : list of str
        CAM methods of the examples.
    layer : str, optional
        CAM target layer.
    """

    name = "multilabel"
    title = "Multi-label quality"
    summary = "mAP, per-label AP and F1 at a threshold with bootstrap CIs; CAMs of each positive label"
    requires = frozenset({"multilabels"})
    tasks = frozenset({"multilabel"})
    run_by_default = True
    salt = "multilabel-examples"
    options: ClassVar[Mapping[str, Option]] = {
        "n_resamples": Option("int", low=100, help="bootstrap resamples (over images) of every CI"),
        "threshold": Option("float", low=0, high=1, low_open=True, high_open=True,
                            help="sigmoid probability above which a label is predicted (F1, CAM targets)"),
        **_CAM_OPTIONS,
    }

    def __init__(self, n_resamples: int = 2000, threshold: float = 0.5, n_examples: int = 4,
                 methods: Sequence[str] = ("gradcam",), layer: str | None = None) -> None:
        self.n_resamples = n_resamples
        self.threshold = threshold
        self.n_examples = n_examples
        self.methods = methods
        self.layer = layer

    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Per image: the logits of the probe's labels and the truth; the label CAMs of example images."""
        logits = batch.logits.detach().float().cpu().numpy()[:, self.columns_]
        truth = ctx.data.multilabels[batch.indices]
        cams = [self._explain(ctx, batch, j) if int(i) in self.examples_ else None for j, i in enumerate(batch.indices)]
        return RecordState.from_batch(batch.indices, logit=logits, truth=truth, cams=cams)

    def _explain(self, ctx: RunContext, batch: Batch, j: int) -> RegionMaps | None:
        classes, maps = explain_regions(ctx, batch.inputs[j : j + 1], MultiLabelTarget(threshold=self.threshold),
                                        methods=self.methods, layer=self.layer_)
        if not classes:
            return None
        i = int(batch.indices[j])
        prep = ctx.handle.require_preprocessing()
        names, masks_have = list(ctx.class_names), set(ctx.data.mask_names())
        masks = []
        for c in classes:
            mask = ctx.data.mask(i, names[c]) if c < len(names) and names[c] in masks_have else None
            masks.append(None if mask is None else prep.resize_mask(mask))
        return RegionMaps(i, classes, maps, masks, render.input_view(batch.images[j], prep))

    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """AP and F1 per label, mAP and macro F1 with CIs; the localisation of the label CAMs."""
        logits, truth = state.stacked("logit"), state.stacked("truth").astype(bool)
        seed = int(ctx.rng(self.name).integers(0, 2**31))
        cut = float(np.log(self.threshold / (1 - self.threshold)))  # sigmoid(x) > t  <=>  x > logit(t)
        s = multilabel_scores(logits, truth, logits > cut, n_resamples=self.n_resamples, seed=seed)
        n = s.n_images
        labels = list(ctx.data.class_names or ())
        per_label = [{"label": name, "support": int(s.support[j]), "predicted": int(s.predicted[j]),
                      "ap": metric(s.ap[j], (s.ap_ci[0, j], s.ap_ci[1, j]), n=n, unit="average precision",
                                   higher_is_better=True),
                      "f1": metric(s.f1[j], (s.f1_ci[0, j], s.f1_ci[1, j]), n=n, unit="F1", higher_is_better=True)}
                     for j, name in enumerate(labels)]
        mean_ap = metric(s.map, s.map_ci, n=n, unit="average precision", higher_is_better=True,
                         labels=int(np.isfinite(s.ap).sum()))
        macro_f1 = metric(s.macro_f1, s.macro_f1_ci, n=n, unit="F1", higher_is_better=True)
        cams, assets, findings = self._cam_parts(ctx, state, self._names(ctx, int(self.columns_.max(initial=0)) + 1),
                                                 seed)
        section = self.section(
            summary={"map": mean_ap, "macro_f1": macro_f1},
            data={"map": mean_ap, "macro_f1": macro_f1, "threshold": self.threshold, "per_label": per_label,
                  "cams": cams,
                  "notes": "AP: area under the step-wise precision-recall curve of the logits (as scikit-learn's "
                           "average_precision_score; undefined, and left out of mAP, for a label without positive "
                           f"images); F1 = 2TP / (2TP + FP + FN) of sigmoid > {self.threshold:g}; 95% percentile "
                           f"bootstrap CIs over the {n} images ({self.n_resamples} resamples, seeded); CAMs explain "
                           "every label the model predicts on the example images (MultiLabelTarget), scored "
                           "against masks/<label>/ where the probe set has them"},
            findings=findings)
        section.assets.update(assets)
        return section
