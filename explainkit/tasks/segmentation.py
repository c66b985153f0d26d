"""Segmentation quality from per-image pixel counts: IoU per class, mIoU, pixel accuracy, with CIs.

The metrics are those of the benchmarks (Pascal VOC, Cityscapes): IoU from the confusion matrix summed
over the images, not a mean of per-image IoUs. They depend on that matrix only through its diagonal,
row sums and column sums, so three (K,) count vectors per image (:func:`class_counts`) are a sufficient
statistic: the bootstrap over images (an image's pixels are not independent units) resamples them,
and memory stays O(N K) even for K = 150 classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explainkit.stats.streaming import percentile_interval

__all__ = ["SegmentationScores", "class_counts", "confusion_matrix", "iou", "pixel_accuracy", "segmentation_scores"]

_CHUNK_ELEMENTS = 4_000_000


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, n_classes: int, ignore: int = 255) -> np.ndarray:
    """(K, K) pixel counts, rows true class, columns predicted class.

    Parameters
    ----------
    pred : ndarray
        (H, W) predicted class per pixel (0 .. K-1).
    truth : ndarray
        (H, W) true class per pixel (0 .. K-1, or ``ignore``).
    n_classes : int
        K.
    ignore : int
        Pixels of this true value are not counted.

    Returns
    -------
    ndarray
        (K, K) int64 counts.
    """
    pred = np.asarray(pred, dtype=np.int64).ravel()
    truth = np.asarray(truth, dtype=np.int64).ravel()
    keep = truth != ignore
    return np.bincount(truth[keep] * n_classes + pred[keep], minlength=n_classes * n_classes
                       ).reshape(n_classes, n_classes)


def class_counts(confusion: np.ndarray) -> np.ndarray:
    """(..., 3, K) per class: correctly predicted pixels (the diagonal), true pixels, predicted pixels."""
    c = np.asarray(confusion)
    return np.stack([np.diagonal(c, axis1=-2, axis2=-1), c.sum(-1), c.sum(-2)], axis=-2)


def _iou_from_counts(counts: np.ndarray) -> np.ndarray:
    tp, true, pred = (np.asarray(counts, dtype=np.float64)[..., j, :] for j in range(3))
    union = true + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def _accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c[..., 1, :].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, c[..., 0, :].sum(-1) / np.where(total > 0, total, 1), np.nan)


def iou(confusion: np.ndarray) -> np.ndarray:
    """(..., K) intersection over union per class, NaN where the class is in neither truth nor prediction.

    ``IoU_k = C_kk / (sum_j C_kj + sum_i C_ik - C_kk)`` of a (..., K, K) confusion matrix.
    """
    return _iou_from_counts(class_counts(confusion))


def pixel_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(...) share of counted pixels whose predicted class is the true one (NaN without pixels)."""
    return _accuracy_from_counts(class_counts(confusion))


def _mean_iou(ious: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(...) mean IoU over ``classes`` (a bool (K,) selection), ignoring NaN."""
    sel = ious[..., classes]
    with np.errstate(invalid="ignore"):
        n = np.isfinite(sel).sum(-1)
        return np.where(n > 0, np.nansum(sel, -1) / np.maximum(n, 1), np.nan)


@dataclass(frozen=True)
class SegmentationScores:
    """What :func:`segmentation_scores` computes.

    Attributes
    ----------
    counts : ndarray
        (3, K) summed :func:`class_counts`: correct, true and predicted pixels per class.
    iou, iou_ci : ndarray
        (K,) IoU per class and (2, K) its 95 % CI (NaN where undefined).
    miou, miou_ci : float, tuple
        Mean IoU over the classes in :attr:`counted` and its CI.
    pixel_accuracy, pixel_accuracy_ci : float, tuple
        Share of counted pixels classified correctly and its CI.
    counted : ndarray
        (K,) bool: the classes in the mean (true or predicted somewhere in the probe set).
    n_images, n_pixels : int
        Images (the bootstrap's unit) and counted pixels.
    """

    counts: np.ndarray
    iou: np.ndarray
    iou_ci: np.ndarray
    miou: float
    miou_ci: tuple[float, float]
    pixel_accuracy: float
    pixel_accuracy_ci: tuple[float, float]
    counted: np.ndarray
    n_images: int
    n_pixels: int


def segmentation_scores(counts: np.ndarray, *, n_resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> SegmentationScores:
    """IoU per class, mIoU and pixel accuracy of the summed counts, with percentile-bootstrap CIs over images.

    Parameters
    ----------
    counts : ndarray
        (N, 3, K) one :func:`class_counts` per image (of its :func:`confusion_matrix`).
    n_resamples : int
        Bootstrap resamples (images drawn with replacement; a resample's counts are summed).
    seed : int
        Seed of the resampling.
    confidence : float
        Two-sided level of the intervals.

    Returns
    -------
    SegmentationScores
        The metrics. mIoU averages the classes present (in truth or prediction) in the whole probe
        set; a class absent from a resample is left out of that resample's mean.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n, k = counts.shape[0], counts.shape[2]
    total = counts.sum(0)
    ious = _iou_from_counts(total)
    counted = np.isfinite(ious)
    flat = counts.reshape(n, 3 * k).astype(np.float64)
    rng = np.random.default_rng(seed)
    reps_iou = np.empty((n_resamples, k))
    reps_acc = np.empty(n_resamples)
    step = max(1, _CHUNK_ELEMENTS // max(n + 3 * k, 1))
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        draws = rng.integers(0, n, size=(r, n))
        weights = np.zeros((r, n))
        np.add.at(weights, (np.arange(r)[:, None], draws), 1.0)
        boot = (weights @ flat).reshape(r, 3, k)
        reps_iou[start : start + r] = _iou_from_counts(boot)
        reps_acc[start : start + r] = _accuracy_from_counts(boot)
    iou_lo, iou_hi = percentile_interval(reps_iou, confidence)
    miou_lo, miou_hi = percentile_interval(_mean_iou(reps_iou, counted), confidence)
    acc_lo, acc_hi = percentile_interval(reps_acc, confidence)
    return SegmentationScores(
        counts=total, iou=ious, iou_ci=np.stack([iou_lo, iou_hi]),
        miou=float(_mean_iou(ious, counted)), miou_ci=(float(miou_lo), float(miou_hi)),
        pixel_accuracy=float(_accuracy_from_counts(total)), pixel_accuracy_ci=(float(acc_lo), float(acc_hi)),
        counted=counted, n_images=n, n_pixels=int(total[1].sum()),
    )
