"""Two-sample comparisons and rank agreement: Welch's t-test and Spearman's rank correlation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["RankCorrelation", "WelchTest", "spearman_correlation", "welch_t_test"]


def _json(obj: object) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(obj).items()}


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``.

    Attributes
    ----------
    n_a, n_b : int
        Sample sizes (non-finite values dropped).
    mean_a, mean_b : float
        Group means.
    difference : float
        ``mean_a - mean_b``.
    ci_low, ci_high : float
        Welch–Satterthwaite t confidence interval of the difference.
    t, df, p : float
        Statistic, degrees of freedom and two-sided p-value.
    hedges_g : float
        Standardised difference (pooled SD, small-sample corrected).
    """

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    hedges_g: float

    def to_dict(self) -> dict:
        """JSON-ready fields (non-finite → ``None``)."""
        return _json(self)


def welch_t_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> WelchTest:
    """Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) with CI and Hedges' g.

    Parameters
    ----------
    a, b : ndarray
        (n_a,), (n_b,) independent samples.
    confidence : float
        Level of the interval.

    Returns
    -------
    WelchTest
        The result; NaN fields when a group has fewer than two finite values.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    nan = float("nan")
    ma = float(a.mean()) if a.size else nan
    mb = float(b.mean()) if b.size else nan
    if a.size < 2 or b.size < 2:
        return WelchTest(int(a.size), int(b.size), ma, mb, ma - mb, nan, nan, nan, nan, nan, nan)
    va, vb = float(a.var(ddof=1)), float(b.var(ddof=1))
    if va == 0 and vb == 0:
        same = ma == mb
        return WelchTest(a.size, b.size, ma, mb, ma - mb, ma - mb, ma - mb, 0.0 if same else nan, nan,
                         1.0 if same else 0.0, 0.0 if same else nan)
    res = stats.ttest_ind(a, b, equal_var=False)
    lo, hi = res.confidence_interval(confidence)
    pooled = np.sqrt(((a.size - 1) * va + (b.size - 1) * vb) / (a.size + b.size - 2))
    correction = 1 - 3 / (4 * (a.size + b.size) - 9)
    g = (ma - mb) / pooled * correction if pooled > 0 else nan
    return WelchTest(int(a.size), int(b.size), ma, mb, ma - mb, float(lo), float(hi), float(res.statistic),
                     float(res.df), float(res.pvalue), float(g))


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rank correlation with a Fisher-z confidence interval.

    Attributes
    ----------
    n : int
        Pairs used (pairs with a non-finite value dropped).
    rho : float
        Spearman's rho.
    ci_low, ci_high : float
        Interval from Fisher's z with the Bonett–Wright standard error
        ``sqrt((1 + rho² / 2) / (n - 3))``.
    p : float
        Two-sided p-value (``scipy.stats.spearmanr``).
    """

    n: int
    rho: float
    ci_low: float
    ci_high: float
    p: float

    def to_dict(self) -> dict:
        """JSON-ready fields (non-finite → ``None``)."""
        return _json(self)


def spearman_correlation(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> RankCorrelation:
    """Spearman's rho of paired samples with a confidence interval.

    Parameters
    ----------
    a, b : ndarray
        (n,) paired values.
    confidence : float
        Level of the interval.

    Returns
    -------
    RankCorrelation
        The result; NaN fields with fewer than 3 pairs or a constant sample (and no CI below 4 pairs).
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    nan = float("nan")
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return RankCorrelation(n, nan, nan, nan, nan)
    res = stats.spearmanr(a, b)
    rho = float(res.statistic)
    lo = hi = nan
    if n > 3:
        z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
        half = float(stats.norm.ppf(0.5 + confidence / 2)) * np.sqrt((1 + rho * rho / 2) / (n - 3))
        lo, hi = float(np.tanh(z - half)), float(np.tanh(z + half))
    return RankCorrelation(n, rho, lo, hi, float(res.pvalue))
