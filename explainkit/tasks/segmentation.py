"""Segmentation quality from per-image confusion matrices: IoU per class, mIoU, pixel accuracy, with CIs.

The per-image confusion matrix is the sufficient statistic: the dataset's matrix is their sum, so
the metrics are those of the benchmarks (Pascal VOC, Cityscapes: IoU from the accumulated matrix,
not a mean of per-image IoUs), and a bootstrap over images resamples whole matrices (an image's
pixels are not independent units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explainkit.stats.streaming import percentile_interval

__all__ = ["SegmentationScores", "confusion_matrix", "iou", "pixel_accuracy", "segmentation_scores"]

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


def iou(confusion: np.ndarray) -> np.ndarray:
    """(..., K) intersection over union per class, NaN where the class is in neither truth nor prediction.

    ``IoU_k = C_kk / (sum_j C_kj + sum_i C_ik - C_kk)`` of a (..., K, K) confusion matrix.
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def pixel_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(...) share of counted pixels whose predicted class is the true one (NaN without pixels)."""
    c = np.asarray(confusion, dtype=np.float64)
    total = c.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.trace(c, axis1=-2, axis2=-1) / np.where(total > 0, total, 1), np.nan)


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
    confusion : ndarray
        (K, K) summed pixel counts (rows true, columns predicted).
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

    confusion: np.ndarray
    iou: np.ndarray
    iou_ci: np.ndarray
    miou: float
    miou_ci: tuple[float, float]
    pixel_accuracy: float
    pixel_accuracy_ci: tuple[float, float]
    counted: np.ndarray
    n_images: int
    n_pixels: int


def segmentation_scores(confusions: np.ndarray, *, n_resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> SegmentationScores:
    """IoU per class, mIoU and pixel accuracy of the summed matrix, with percentile-bootstrap CIs over images.

    Parameters
    ----------
    confusions : ndarray
        (N, K, K) one confusion matrix per image (:func:`confusion_matrix`).
    n_resamples : int
        Bootstrap resamples (images drawn with replacement; a resample's matrices are summed).
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
    confusions = np.asarray(confusions, dtype=np.int64)
    n, k = confusions.shape[0], confusions.shape[1]
    total = confusions.sum(0)
    ious = iou(total)
    counted = np.isfinite(ious)
    flat = confusions.reshape(n, k * k).astype(np.float64)
    rng = np.random.default_rng(seed)
    reps_iou = np.empty((n_resamples, k))
    reps_acc = np.empty(n_resamples)
    step = max(1, _CHUNK_ELEMENTS // max(n + k * k, 1))
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        draws = rng.integers(0, n, size=(r, n))
        weights = np.zeros((r, n))
        np.add.at(weights, (np.arange(r)[:, None], draws), 1.0)
        boot = (weights @ flat).reshape(r, k, k)
        reps_iou[start : start + r] = iou(boot)
        reps_acc[start : start + r] = pixel_accuracy(boot)
    iou_lo, iou_hi = percentile_interval(reps_iou, confidence)
    miou_lo, miou_hi = percentile_interval(_mean_iou(reps_iou, counted), confidence)
    acc_lo, acc_hi = percentile_interval(reps_acc, confidence)
    return SegmentationScores(
        confusion=total, iou=ious, iou_ci=np.stack([iou_lo, iou_hi]),
        miou=float(_mean_iou(ious, counted)), miou_ci=(float(miou_lo), float(miou_hi)),
        pixel_accuracy=float(pixel_accuracy(total)), pixel_accuracy_ci=(float(acc_lo), float(acc_hi)),
        counted=counted, n_images=n, n_pixels=int(total.sum()),
    )
