"""Stratified two-group comparison: a difference of means within strata, with a Welch-type test.

For a value ``x`` (e.g. a model's probability of one class), a membership indicator (the images
that carry a cue) and strata (the images' true classes), the estimate compares members with
non-members *of the same stratum* and averages over strata with the members' weights::

    D  = sum_s w_s (mean(x | member, s) - mean(x | reference, s)),   w_s = n_member,s / sum_s n_member,s
    SE = sqrt( sum_s w_s^2 (v_member,s / n_member,s + v_reference,s / n_reference,s) )

(``v`` are sample variances). ``D`` is the average effect on the members (the treated units),
under the assumption that the stratum is the only thing members and non-members differ in
besides membership. The test is one-sided against a margin ``m`` (``H0: D <= m``, a
minimum-effect test; ``m = 0`` is the ordinary test): ``t = (D - m) / SE`` with the
Welch–Satterthwaite degrees of freedom pooled over all groups, and the CI is ``D ± t_q SE``.
Only strata with at least ``min_group`` members and ``min_group`` reference images enter.

Every statistic is computed for several value columns at once (``values`` of shape (n, T): one
column per candidate target), so a search over targets costs one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["StratifiedDifference", "stratified_difference"]


@dataclass(frozen=True)
class StratifiedDifference:
    """The result of :func:`stratified_difference` for T value columns.

    Attributes
    ----------
    effect : ndarray
        (T,) ``D``, the members' mean minus their stratum-mates' mean, weighted by members.
    se : ndarray
        (T,) standard error of ``D``.
    df : ndarray
        (T,) Welch–Satterthwaite degrees of freedom.
    ci_low, ci_high : ndarray
        (T,) two-sided confidence interval at ``confidence``.
    t : ndarray
        (T,) ``(D - margin) / se``.
    p : ndarray
        (T,) one-sided p-value of ``H0: D <= margin``.
    margin : float
        The margin of the test.
    confidence : float
        The CI level.
    n_member, n_reference : int
        Images in the strata that entered.
    strata : ndarray
        (S,) the strata that entered.
    n_member_s, n_reference_s : ndarray
        (S,) group sizes per stratum.
    mean_member_s, mean_reference_s, var_member_s, var_reference_s : ndarray
        (S, T) group means and sample variances per stratum (sufficient statistics: two reports
        can be compared without the images).
    """

    effect: np.ndarray
    se: np.ndarray
    df: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    t: np.ndarray
    p: np.ndarray
    margin: float
    confidence: float
    n_member: int
    n_reference: int
    strata: np.ndarray
    n_member_s: np.ndarray
    n_reference_s: np.ndarray
    mean_member_s: np.ndarray
    mean_reference_s: np.ndarray
    var_member_s: np.ndarray
    var_reference_s: np.ndarray

    @property
    def defined(self) -> bool:
        """Whether at least one stratum entered (else every statistic is NaN)."""
        return self.strata.size > 0

    def column(self, j: int) -> dict:
        """JSON-ready statistics of value column ``j`` (non-finite numbers become ``None``)."""

        def num(x: float) -> float | None:
            x = float(x)
            return x if math.isfinite(x) else None

        return {
            "effect": num(self.effect[j]), "se": num(self.se[j]), "df": num(self.df[j]),
            "ci": [num(self.ci_low[j]), num(self.ci_high[j])], "confidence": self.confidence,
            "t": num(self.t[j]), "p": num(self.p[j]), "margin": self.margin,
            "n_member": self.n_member, "n_reference": self.n_reference,
            "strata": [{"stratum": int(s), "n_member": int(a), "n_reference": int(b),
                        "mean_member": num(ma), "mean_reference": num(mb),
                        "var_member": num(va), "var_reference": num(vb)}
                       for s, a, b, ma, mb, va, vb in zip(
                           self.strata, self.n_member_s, self.n_reference_s, self.mean_member_s[:, j],
                           self.mean_reference_s[:, j], self.var_member_s[:, j], self.var_reference_s[:, j])],
        }


def _group_stats(x: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (G,), means (G, T) and sample variances (G, T) of the rows of ``x`` by group code."""
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, x.shape[1]))
    np.add.at(sums, codes, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
        dev = x - means[codes]
        ss = np.zeros((n_groups, x.shape[1]))
        np.add.at(ss, codes, dev * dev)
        var = ss / (counts[:, None] - 1.0)
    return counts, means, var


def stratified_difference(
    values: np.ndarray,
    member: np.ndarray,
    strata: np.ndarray,
    *,
    margin: float = 0.0,
    confidence: float = 0.95,
    min_group: int = 2,
) -> StratifiedDifference:
    """Members vs non-members of the same stratum: weighted difference of means, CI and one-sided test.

    Parameters
    ----------
    values : ndarray
        (n,) or (n, T) values (T columns tested at once).
    member : ndarray
        (n,) bool: the images in the slice.
    strata : ndarray
        (n,) integer stratum of each image (e.g. its class); negative values are left out.
    margin : float
        The test's null is ``D <= margin``.
    confidence : float
        Level of the two-sided CI.
    min_group : int
        A stratum enters only with at least this many members and reference images (>= 2, so
        that both variances exist).

    Returns
    -------
    StratifiedDifference
        Statistics per value column (NaN when no stratum entered).

    Notes
    -----
    When every entering group has zero variance the standard error is 0: the p-value is then 0
    when ``D > margin`` and 1 otherwise, and the CI collapses to ``D``.
    """
    if min_group < 2:
        raise ValueError("min_group must be at least 2 (each group needs a variance)")
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    member = np.asarray(member, dtype=bool)
    strata = np.asarray(strata, dtype=np.int64)
    if x.shape[0] != member.shape[0] or member.shape != strata.shape:
        raise ValueError("values, member and strata must have the same length")
    keep = strata >= 0
    x, member, strata = x[keep], member[keep], strata[keep]
    levels, codes = np.unique(strata, return_inverse=True)
    s = levels.size
    counts, means, var = _group_stats(x, codes * 2 + member.astype(np.int64), 2 * s)
    n_ref, n_mem = counts[0::2], counts[1::2]
    ok = (n_mem >= min_group) & (n_ref >= min_group)
    t_cols = x.shape[1]
    if not ok.any():
        nan = np.full(t_cols, np.nan)
        empty = np.zeros((0, t_cols))
        return StratifiedDifference(nan, nan, nan, nan, nan, nan, nan, float(margin), confidence, 0, 0,
                                    np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                                    empty, empty, empty, empty)
    m_mem, m_ref = means[1::2][ok], means[0::2][ok]
    v_mem, v_ref = var[1::2][ok], var[0::2][ok]
    a, b = n_mem[ok], n_ref[ok]
    w = a / a.sum()
    effect = (w[:, None] * (m_mem - m_ref)).sum(0)
    c_mem = (w * w / a)[:, None] * v_mem
    c_ref = (w * w / b)[:, None] * v_ref
    se2 = c_mem.sum(0) + c_ref.sum(0)
    denom = (c_mem**2 / (a - 1.0)[:, None]).sum(0) + (c_ref**2 / (b - 1.0)[:, None]).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(denom > 0, se2**2 / denom, (a.sum() + b.sum() - 2.0))
        se = np.sqrt(se2)
        t = np.where(se > 0, (effect - margin) / se, np.where(effect > margin, np.inf, -np.inf))
    p = np.where(se > 0, stats.t.sf(t, df), np.where(effect > margin, 0.0, 1.0))
    q = stats.t.ppf(0.5 + confidence / 2.0, df)
    return StratifiedDifference(
        effect=effect, se=se, df=df, ci_low=effect - q * se, ci_high=effect + q * se, t=t, p=p,
        margin=float(margin), confidence=confidence, n_member=int(a.sum()), n_reference=int(b.sum()),
        strata=levels[ok], n_member_s=a.astype(np.int64), n_reference_s=b.astype(np.int64),
        mean_member_s=m_mem, mean_reference_s=m_ref, var_member_s=v_mem, var_reference_s=v_ref,
    )
