"""Concept learnability: whether a linear probe can decode the concept from the layer at all.

Ramaswamy et al. (CVPR 2023) find that many concepts used to label units cannot be learned from
the representation; a label naming such a concept says more about the probe data than about the
model. Per layer and concept, a logistic-regression probe (class-balanced, standardised features)
is cross-validated (stratified k-fold, seeded); its out-of-fold predictions give

* the balanced accuracy (chance = 0.5 whatever the concept's frequency) with a percentile
  bootstrap CI over images;
* the AUROC of the out-of-fold decision values with a DeLong CI and a one-sided Mann–Whitney p
  (Benjamini–Hochberg over all layers × concepts in the analyzer).

A concept is *decodable* from a layer when q < alpha and the balanced accuracy's lower bound
exceeds a floor (0.6 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from explainkit.errors import ConfigError
from explainkit.stats import bootstrap_ci, delong_ci, mann_whitney

__all__ = ["ProbeResult", "linear_probe"]


@dataclass
class ProbeResult:
    """Cross-validated linear probe of one concept.

    Attributes
    ----------
    n, n_positive : int
        Images and those showing the concept.
    balanced_accuracy, ci_low, ci_high : float
        Out-of-fold balanced accuracy and its bootstrap CI.
    auroc, auroc_ci_low, auroc_ci_high : float
        Out-of-fold AUROC of the decision values and its DeLong CI.
    p : float
        One-sided Mann–Whitney p of AUROC > 0.5.
    """

    n: int
    n_positive: int
    balanced_accuracy: float
    ci_low: float
    ci_high: float
    auroc: float
    auroc_ci_low: float
    auroc_ci_high: float
    p: float


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Balanced accuracy along the last axis (rows = resamples)."""
    pos = y.sum(-1)
    neg = y.shape[-1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * ((pred & y).sum(-1) / pos + (~pred & ~y).sum(-1) / neg)


def linear_probe(acts: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, n_resamples: int = 1000,
                 confidence: float = 0.95) -> ProbeResult | None:
    """Cross-validate a logistic-regression probe of a binary concept.

    Parameters
    ----------
    acts : ndarray
        (n, D) one activation vector per image.
    y : ndarray
        (n,) bool concept labels.
    folds : int
        Stratified folds.
    seed : int
        Seeds the folds and the bootstrap.
    n_resamples : int
        Bootstrap resamples of the balanced accuracy.
    confidence : float
        CI level.

    Returns
    -------
    ProbeResult or None
        ``None`` when either class has fewer images than folds.
    """
    if folds < 2:
        raise ConfigError(f"folds must be at least 2, not {folds}")
    y = np.asarray(y, bool)
    if min(y.sum(), (~y).sum()) < folds:
        return None
    scores = np.zeros(y.size)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(acts, y):
        scale = StandardScaler().fit(acts[train])
        model = LogisticRegression(class_weight="balanced", max_iter=2000)
        model.fit(scale.transform(acts[train]), y[train])
        scores[test] = model.decision_function(scale.transform(acts[test]))
    pred = scores > 0
    ba = float(_balanced_accuracy(pred, y))
    lo, hi = bootstrap_ci(np.arange(y.size, dtype=float),
                          lambda idx: _balanced_accuracy(pred[idx.astype(int)], y[idx.astype(int)]),
                          confidence=confidence, n_resamples=n_resamples, seed=seed)
    dl = delong_ci(scores, y, confidence)
    mw = mann_whitney(scores, y, "greater")
    return ProbeResult(int(y.size), int(y.sum()), ba, lo, hi, dl.auroc, dl.ci_low, dl.ci_high, mw.p)
