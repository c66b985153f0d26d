"""TCAV scores and the paper's significance test, from mergeable sign counts.

For class k and CAV v, TCAV_Q = the share of class-k inputs whose class-k gradient at the layer has
a positive dot product with v (captum's ``sign_count``). Kim et al. (2018) train R CAVs per concept
against different random counterparts and R random-vs-random CAVs, and test the concept's R scores
against the random ones with a two-sided t-test (tensorflow/tcav: ``scipy.stats.ttest_ind``,
Student's, equal variances); a concept counts for a class only when the test rejects. Here every
(layer, class, concept) test is reported with the difference of mean scores, its t confidence
interval and p, and Holm's correction over all of them (the paper used Bonferroni).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from explainkit.stats import holm

__all__ = ["TcavCounts", "TcavTest", "tcav_tests"]


@dataclass
class TcavCounts:
    """Mergeable sign counts: how many inputs of each class point along each CAV.

    Attributes
    ----------
    positive : ndarray
        (L, K, S) int64: layer, class, experimental set (concept-major C·R sets, then R null sets).
    n : ndarray
        (K,) int64 inputs of each class.
    """

    positive: np.ndarray
    n: np.ndarray

    def merge(self, other: TcavCounts) -> TcavCounts:
        """Sum (associative and commutative, exact)."""
        return TcavCounts(self.positive + other.positive, self.n + other.n)


@dataclass
class TcavTest:
    """One (layer, class, concept) test.

    Attributes
    ----------
    layer, class_name, concept : str
        What was tested.
    n : int
        Class inputs scored.
    scores, null : ndarray
        (R,) TCAV scores of the concept's CAVs and of the random CAVs.
    score, score_ci_low, score_ci_high : float
        Mean concept score and its t interval over the runs.
    null_score : float
        Mean random score.
    difference, ci_low, ci_high : float
        ``score − null_score`` and its Student t interval.
    t, p : float
        Two-sided Student t-test of the two score lists.
    p_holm : float
        Holm-adjusted over every test of the analysis.
    significant : bool
        ``p_holm < alpha``.
    """

    layer: str
    class_name: str
    concept: str
    n: int
    scores: np.ndarray
    null: np.ndarray
    score: float
    score_ci_low: float
    score_ci_high: float
    null_score: float
    difference: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    p_holm: float = float("nan")
    significant: bool = False


def _student(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """t, p, CI of mean(a) − mean(b); identical score lists (zero variance) give p 0 or 1 and a point CI."""
    diff = float(a.mean() - b.mean())
    if np.var(a) == 0 and np.var(b) == 0:
        return (np.inf * np.sign(diff) if diff else 0.0), (0.0 if diff else 1.0), diff, diff
    with warnings.catch_warnings():  # near-constant score lists: scipy warns about precision, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b)
        ci = res.confidence_interval(confidence)
    return float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)


def _mean_ci(a: np.ndarray, confidence: float) -> tuple[float, float]:
    if a.size < 2 or np.var(a) == 0:
        return float(a.mean()), float(a.mean())
    half = stats.t.ppf(0.5 + confidence / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size)
    return float(a.mean() - half), float(a.mean() + half)


def tcav_tests(counts: TcavCounts, layers: Sequence[str], classes: Sequence[str], concepts: Sequence[str],
               runs: int, *, alpha: float = 0.05, confidence: float = 0.95) -> list[TcavTest]:
    """Every (layer, class, concept) TCAV test from merged sign counts.

    Parameters
    ----------
    counts : TcavCounts
        Merged counts; set s < C·R is concept s // R, run s % R; the last R sets are the null.
    layers, classes, concepts : sequence of str
        Names of the L, K and C axes.
    runs : int
        R.
    alpha : float
        Family-wise error rate (Holm over all tests).
    confidence : float
        Level of the intervals.

    Returns
    -------
    list of TcavTest
        Layer-major, then class, then concept; classes without inputs are left out.
    """
    n_concepts = len(concepts)
    out = []
    for li, layer in enumerate(layers):
        for k, cls in enumerate(classes):
            n = int(counts.n[k])
            if n == 0:
                continue
            share = counts.positive[li, k] / n
            null = share[n_concepts * runs :]
            for c, concept in enumerate(concepts):
                scores = share[c * runs : (c + 1) * runs]
                t, p, lo, hi = _student(scores, null, confidence)
                slo, shi = _mean_ci(scores, confidence)
                out.append(TcavTest(layer, cls, concept, n, scores, null, float(scores.mean()), slo, shi,
                                    float(null.mean()), float(scores.mean() - null.mean()), lo, hi, t, p))
    adjusted = holm(np.array([r.p for r in out]))
    for r, q in zip(out, adjusted):
        r.p_holm = float(q)
        r.significant = bool(q < alpha)
    return out
