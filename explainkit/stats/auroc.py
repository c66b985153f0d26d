"""Rank statistics of a binary split of scores: exact AUROC, DeLong CI, Mann–Whitney U with log p.

All three read the same quantity: for positives P and negatives Q, ``U = #{(i, j): s_i > s_j} +
½ #{(i, j): s_i = s_j}`` over i in P, j in Q, and ``AUROC = U / (|P|·|Q|)`` (ties count ½, as in
scikit-learn's ``roc_auc_score``). p-values use the normal approximation with tie and continuity
corrections (SciPy's ``mannwhitneyu(..., method="asymptotic")``) and are also returned as
``log10 p``, which does not underflow for strong effects.

:class:`RankedScores` sorts the scores once and then answers any number of masks in O(n) each,
which is what a neuron-labelling search needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import special, stats

__all__ = [
    "DeLong",
    "MannWhitney",
    "RankedScores",
    "auroc",
    "delong_ci",
    "mann_whitney",
    "mann_whitney_log10_p",
    "mann_whitney_z",
    "normal_log10_sf",
    "tie_sum",
]

_ALTERNATIVES = ("greater", "less", "two-sided")
_LN10 = float(np.log(10.0))


def tie_sum(scores: np.ndarray) -> float:
    """Σ (t³ − t) over groups of tied values (the Mann–Whitney tie-correction term).

    Parameters
    ----------
    scores : ndarray
        (n,) values.

    Returns
    -------
    float
        The tie term (0 when all values are distinct).
    """
    _, t = np.unique(np.asarray(scores), return_counts=True)
    t = t.astype(np.float64)
    return float(np.sum(t**3 - t))


def mann_whitney_z(u: np.ndarray | float, n1: np.ndarray | int, n0: np.ndarray | int,
                   ties: np.ndarray | float, alternative: str = "greater",
                   continuity: bool = True) -> np.ndarray:
    """Standardised Mann–Whitney statistic, vectorised, in SciPy's convention.

    Parameters
    ----------
    u : ndarray or float
        U of the positives (``AUROC · n1 · n0``).
    n1, n0 : ndarray or int
        Numbers of positives and negatives.
    ties : ndarray or float
        Tie term Σ (t³ − t) of all n1 + n0 values (:func:`tie_sum`).
    alternative : {"greater", "less", "two-sided"}
        ``"greater"``: positives score higher. For ``"less"`` the statistic of the negatives is
        used and for ``"two-sided"`` the larger of the two, so that a large ``z`` always means a
        small p (``p = sf(z)``, doubled for two-sided).
    continuity : bool
        Subtract ½ from ``U − n1·n0/2`` (SciPy's default).

    Returns
    -------
    ndarray
        z; NaN when a group is empty, ``-inf`` when all values are tied.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(_ALTERNATIVES)}, not {alternative!r}")
    u = np.asarray(u, dtype=np.float64)
    n1 = np.asarray(n1, dtype=np.float64)
    n0 = np.asarray(n0, dtype=np.float64)
    n = n1 + n0
    if alternative == "less":
        u = n1 * n0 - u
    elif alternative == "two-sided":
        u = np.maximum(u, n1 * n0 - u)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(n1 * n0 / 12.0 * ((n + 1) - np.asarray(ties, np.float64) / (n * (n - 1))))
        z = (u - n1 * n0 / 2.0 - (0.5 if continuity else 0.0)) / sigma
    return np.where((n1 > 0) & (n0 > 0), z, np.nan)


def normal_log10_sf(z: np.ndarray | float) -> np.ndarray:
    """log10 of the standard normal survival function, accurate far into the tail (no underflow)."""
    return special.log_ndtr(-np.asarray(z, dtype=np.float64)) / _LN10


def mann_whitney_log10_p(z: np.ndarray | float, alternative: str = "greater") -> np.ndarray:
    """log10 p of :func:`mann_whitney_z`'s ``z`` (doubled and capped at 1 for two-sided)."""
    log10_p = normal_log10_sf(z)
    if alternative == "two-sided":
        log10_p = np.minimum(0.0, log10_p + np.log10(2.0))
    return log10_p


@dataclass(frozen=True)
class MannWhitney:
    """A Mann–Whitney U test of positives against negatives.

    Attributes
    ----------
    u : float
        U of the positives.
    auroc : float
        ``u / (n1 · n0)``.
    z : float
        Standardised statistic (see :func:`mann_whitney_z`).
    p : float
        p-value (may underflow to 0.0; use ``log10_p``).
    log10_p : float
        log10 of the p-value.
    alternative : str
        The alternative tested.
    n1, n0 : int
        Group sizes.
    """

    u: float
    auroc: float
    z: float
    p: float
    log10_p: float
    alternative: str
    n1: int
    n0: int

    def to_dict(self) -> dict:
        """JSON-ready fields (non-finite values become ``None``)."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def _mwu_result(u: float, n1: int, n0: int, ties: float, alternative: str) -> MannWhitney:
    z = float(mann_whitney_z(u, n1, n0, ties, alternative))
    if np.isnan(z):
        return MannWhitney(float(u), float("nan"), z, float("nan"), float("nan"), alternative, n1, n0)
    log10_p = float(mann_whitney_log10_p(z, alternative))
    return MannWhitney(float(u), float(u) / (n1 * n0), z, float(10.0**log10_p), log10_p, alternative, n1, n0)


@lru_cache(maxsize=16)
def _normal_quantile(q: float) -> float:
    return float(stats.norm.ppf(q))


@dataclass(frozen=True)
class DeLong:
    """AUROC with DeLong's standard error and a normal confidence interval.

    Attributes
    ----------
    auroc : float
        Exact AUROC (ties ½).
    se : float
        DeLong standard error (NaN with fewer than two positives or negatives).
    ci_low, ci_high : float
        ``auroc ∓ z·se`` clipped to [0, 1] (NaN when ``se`` is).
    confidence : float
        Two-sided level of the interval.
    n1, n0 : int
        Group sizes.
    """

    auroc: float
    se: float
    ci_low: float
    ci_high: float
    confidence: float
    n1: int
    n0: int


class RankedScores:
    """Scores sorted once; AUROC, DeLong CI and Mann–Whitney U for any mask in O(n).

    Parameters
    ----------
    scores : ndarray
        (n,) finite scores (e.g. one neuron's activations).

    Notes
    -----
    Samples are grouped by tied value. For a mask with ``p_g`` positives in group ``g``, each
    positive's placement (the share of negatives it beats, ties ½) and each negative's placement
    follow from cumulative group counts, which gives U exactly and DeLong's variance
    (DeLong, DeLong & Clarke-Pearson 1988; midrank form of Sun & Xu 2014).
    """

    def __init__(self, scores: np.ndarray) -> None:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1:
            raise ValueError("scores must be 1-D")
        order = np.argsort(s, kind="stable")
        ss = s[order]
        new = np.ones(s.size, dtype=bool)
        new[1:] = ss[1:] != ss[:-1]
        gid_sorted = np.cumsum(new) - 1
        self.n = int(s.size)
        self.group = np.empty(s.size, dtype=np.int64)
        self.group[order] = gid_sorted
        self.sizes = np.bincount(gid_sorted).astype(np.float64)
        self.before = np.cumsum(self.sizes) - self.sizes
        self.ties = float(np.sum(self.sizes**3 - self.sizes))

    def _counts(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n,):
            raise ValueError(f"mask has shape {mask.shape}, expected ({self.n},)")
        pos = np.bincount(self.group[mask], minlength=self.sizes.size).astype(np.float64)
        n1 = int(mask.sum())
        return pos, self.sizes - pos, n1, self.n - n1

    def _u(self, pos: np.ndarray, neg: np.ndarray) -> float:
        neg_below = self.before - (np.cumsum(pos) - pos)
        return float(np.sum(pos * (neg_below + neg / 2.0)))

    def u(self, mask: np.ndarray) -> float:
        """Mann–Whitney U of the positives in ``mask`` (exact, a multiple of ½)."""
        pos, neg, _, _ = self._counts(mask)
        return self._u(pos, neg)

    def auroc(self, mask: np.ndarray) -> float:
        """Exact AUROC of the scores for ``mask`` (NaN when one group is empty)."""
        pos, neg, n1, n0 = self._counts(mask)
        return self._u(pos, neg) / (n1 * n0) if n1 and n0 else float("nan")

    def delong(self, mask: np.ndarray, confidence: float = 0.95) -> DeLong:
        """AUROC with DeLong's standard error and normal CI (clipped to [0, 1])."""
        pos, neg, n1, n0 = self._counts(mask)
        nan = float("nan")
        if n1 == 0 or n0 == 0:
            return DeLong(nan, nan, nan, nan, confidence, n1, n0)
        pos_before = np.cumsum(pos) - pos
        v10 = (self.before - pos_before + neg / 2.0) / n0  # per positive in group g
        v01 = (n1 - pos_before - pos + pos / 2.0) / n1  # per negative in group g
        auc = float(np.sum(pos * v10) / n1)
        if n1 < 2 or n0 < 2:
            return DeLong(auc, nan, nan, nan, confidence, n1, n0)
        s10 = float(np.sum(pos * (v10 - auc) ** 2) / (n1 - 1))
        s01 = float(np.sum(neg * (v01 - auc) ** 2) / (n0 - 1))
        se = float(np.sqrt(s10 / n1 + s01 / n0))
        half = _normal_quantile(0.5 + confidence / 2.0) * se
        return DeLong(auc, se, max(0.0, auc - half), min(1.0, auc + half), confidence, n1, n0)

    def mann_whitney(self, mask: np.ndarray, alternative: str = "greater") -> MannWhitney:
        """Mann–Whitney U test of the masked scores against the others."""
        pos, neg, n1, n0 = self._counts(mask)
        return _mwu_result(self._u(pos, neg), n1, n0, self.ties, alternative)


def auroc(scores: np.ndarray, mask: np.ndarray) -> float:
    """Exact AUROC of ``scores`` for the binary labels ``mask`` (ties ½; NaN if one class is empty)."""
    return RankedScores(scores).auroc(mask)


def delong_ci(scores: np.ndarray, mask: np.ndarray, confidence: float = 0.95) -> DeLong:
    """AUROC with a DeLong confidence interval (see :meth:`RankedScores.delong`)."""
    return RankedScores(scores).delong(mask, confidence)


def mann_whitney(scores: np.ndarray, mask: np.ndarray, alternative: str = "greater") -> MannWhitney:
    """One- or two-sided Mann–Whitney U test of ``scores[mask]`` against ``scores[~mask]``.

    Parameters
    ----------
    scores : ndarray
        (n,) values.
    mask : ndarray
        (n,) bool, the positives.
    alternative : {"greater", "less", "two-sided"}
        ``"greater"``: positives score higher.

    Returns
    -------
    MannWhitney
        U, AUROC, z, p and log10 p (normal approximation, tie and continuity corrected).
    """
    return RankedScores(scores).mann_whitney(mask, alternative)
