"""Paired and proportion tests with effect sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["PairedTest", "wilcoxon_signed_rank", "wilson_interval"]


@dataclass(frozen=True)
class PairedTest:
    """Result of a one-sample / paired location test on differences.

    Attributes
    ----------
    n : int
        Number of pairs used (non-finite differences dropped).
    statistic : float
        Wilcoxon W+ (sum of ranks of positive differences).
    p : float
        p-value for the chosen alternative.
    mean, median : float
        Of the differences.
    effect_size : float
        Matched-pairs rank-biserial correlation in [-1, 1] (positive: differences tend to be > 0).
    cohens_dz : float
        Mean / standard deviation of the differences.
    win_rate : float
        Fraction of strictly positive differences.
    alternative : str
        ``"greater"``, ``"less"`` or ``"two-sided"``.
    """

    n: int
    statistic: float
    p: float
    mean: float
    median: float
    effect_size: float
    cohens_dz: float
    win_rate: float
    alternative: str

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def wilcoxon_signed_rank(differences: np.ndarray, alternative: str = "greater") -> PairedTest:
    """Wilcoxon signed-rank test of paired differences against zero.

    Zero differences are dropped (Wilcoxon's convention); exact p-values for small samples without
    ties, the normal approximation with tie correction otherwise (SciPy's ``method="auto"``).

    Parameters
    ----------
    differences : ndarray
        (n,) paired differences, one per image.
    alternative : str
        ``"greater"`` tests a positive shift.

    Returns
    -------
    PairedTest
        Statistic, p-value and effect sizes.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return PairedTest(0, nan, nan, nan, nan, nan, nan, nan, alternative)
    mean, median = float(d.mean()), float(np.median(d))
    sd = float(d.std(ddof=1)) if n > 1 else nan
    dz = mean / sd if sd and np.isfinite(sd) and sd > 0 else nan
    win = float(np.mean(d > 0))
    nz = d[d != 0]
    if nz.size == 0:
        return PairedTest(n, 0.0, 1.0, mean, median, 0.0, dz, win, alternative)
    ranks = stats.rankdata(np.abs(nz))
    w_plus = float(ranks[nz > 0].sum())
    total = float(ranks.sum())
    rbc = (2.0 * w_plus - total) / total
    res = stats.wilcoxon(nz, alternative=alternative, zero_method="wilcox")
    return PairedTest(n, w_plus, float(res.pvalue), mean, median, rbc, dz, win, alternative)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (``(nan, nan)`` when ``n == 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
