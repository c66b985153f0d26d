"""Multi-label quality: average precision per label, mAP and F1 at a threshold, with bootstrap CIs over images.

Average precision is the step-wise area under the precision-recall curve, thresholds at every
distinct score (``AP = sum_n (R_n - R_{n-1}) P_n``), as scikit-learn's ``average_precision_score``
(no interpolation, unlike Pascal VOC 2007's 11-point AP). The bootstrap resamples images; a resample
is an integer weight per image, so AP, precision and recall of a resample come from weighted
cumulative sums over one sort of the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explainkit.stats.streaming import percentile_interval

__all__ = ["MultiLabelScores", "average_precision", "f1_scores", "multilabel_scores"]

_CHUNK_ELEMENTS = 4_000_000


def average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AP of one label, for one or several (weighted) resamples of the images.

    Parameters
    ----------
    scores : ndarray
        (N,) score per image (logit or probability: only the order matters).
    positive : ndarray
        (N,) bool truth.
    weights : ndarray, optional
        (R, N) non-negative weight of each image in each resample (bootstrap counts); default one
        resample with weight 1.

    Returns
    -------
    ndarray
        (R,) AP per resample; NaN where a resample has no positive image (AP is undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    w = np.ones((1, scores.size)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], y[order], w[:, order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last image of each group of tied scores
    tp = np.cumsum(w * y, axis=1)[:, last]
    seen = np.cumsum(w, axis=1)[:, last]
    n_pos = tp[:, -1:] if tp.size else np.zeros((w.shape[0], 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / np.where(seen > 0, seen, 1), 0.0)
        recall = tp / n_pos
        gained = np.diff(np.concatenate([np.zeros((w.shape[0], 1)), recall], axis=1), axis=1)
        ap = (gained * precision).sum(1)
    return np.where(n_pos[:, 0] > 0, ap, np.nan)


def f1_scores(predicted: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """F1 per label, ``2 TP / (2 TP + FP + FN)``, for one or several (weighted) resamples.

    Parameters
    ----------
    predicted, positive : ndarray
        (N, L) bool predictions and truth.
    weights : ndarray, optional
        (R, N) weight of each image per resample; default one resample with weight 1.

    Returns
    -------
    ndarray
        (R, L) F1; NaN where a label is neither true nor predicted in a resample.
    """
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(positive, dtype=np.float64)
    w = np.ones((1, p.shape[0])) if weights is None else np.asarray(weights, dtype=np.float64)
    tp, fp, fn = w @ (p * t), w @ (p * (1 - t)), w @ ((1 - p) * t)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(-1)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.nansum(x, -1) / np.maximum(n, 1), np.nan)


@dataclass(frozen=True)
class MultiLabelScores:
    """What :func:`multilabel_scores` computes (per-label arrays are (L,), CIs (2, L)).

    Attributes
    ----------
    ap, ap_ci : ndarray
        Average precision per label (NaN for a label without positive images) and its CI.
    map, map_ci : float, tuple
        Mean AP over the labels with positive images, and its CI.
    f1, f1_ci : ndarray
        F1 per label at the threshold and its CI.
    macro_f1, macro_f1_ci : float, tuple
        Mean F1 over the labels where it is defined.
    support, predicted : ndarray
        (L,) positive images and images predicted positive per label.
    n_images : int
        Images (the bootstrap's unit).
    """

    ap: np.ndarray
    ap_ci: np.ndarray
    map: float
    map_ci: tuple[float, float]
    f1: np.ndarray
    f1_ci: np.ndarray
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    support: np.ndarray
    predicted: np.ndarray
    n_images: int


def multilabel_scores(scores: np.ndarray, positive: np.ndarray, predicted: np.ndarray, *,
                      n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> MultiLabelScores:
    """AP and F1 per label, mAP and macro F1, with percentile-bootstrap CIs over images.

    Parameters
    ----------
    scores : ndarray
        (N, L) scores (logits or sigmoid probabilities).
    positive : ndarray
        (N, L) bool truth.
    predicted : ndarray
        (N, L) bool predictions (e.g. sigmoid > threshold).
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.
    confidence : float
        Two-sided level.

    Returns
    -------
    MultiLabelScores
        The metrics.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    n, n_labels = scores.shape
    ap = np.array([average_precision(scores[:, j], positive[:, j])[0] for j in range(n_labels)])
    f1 = f1_scores(predicted, positive)[0]
    rng = np.random.default_rng(seed)
    reps_ap = np.empty((n_resamples, n_labels))
    reps_f1 = np.empty((n_resamples, n_labels))
    step = max(1, _CHUNK_ELEMENTS // max(n * max(n_labels, 1), 1))
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        weights = np.zeros((r, n))
        np.add.at(weights, (np.arange(r)[:, None], rng.integers(0, n, size=(r, n))), 1.0)
        for j in range(n_labels):
            reps_ap[start : start + r, j] = average_precision(scores[:, j], positive[:, j], weights)
        reps_f1[start : start + r] = f1_scores(predicted, positive, weights)
    counted = np.isfinite(ap)
    reps_map = _nanmean(np.where(counted, reps_ap, np.nan))
    ap_lo, ap_hi = percentile_interval(reps_ap, confidence)
    f1_lo, f1_hi = percentile_interval(reps_f1, confidence)
    map_lo, map_hi = percentile_interval(reps_map, confidence)
    mf1_lo, mf1_hi = percentile_interval(_nanmean(reps_f1), confidence)
    return MultiLabelScores(
        ap=ap, ap_ci=np.stack([ap_lo, ap_hi]), map=float(_nanmean(np.where(counted, ap, np.nan))),
        map_ci=(float(map_lo), float(map_hi)), f1=f1, f1_ci=np.stack([f1_lo, f1_hi]),
        macro_f1=float(_nanmean(f1)), macro_f1_ci=(float(mf1_lo), float(mf1_hi)),
        support=positive.sum(0), predicted=predicted.sum(0), n_images=n,
    )
