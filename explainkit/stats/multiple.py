"""Multiple-comparison corrections: Holm (FWER) and Benjamini–Hochberg / –Yekutieli (FDR)."""

from __future__ import annotations

import numpy as np

__all__ = ["adjust_pvalues", "benjamini_hochberg", "holm"]


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs are left out and stay NaN).

    Parameters
    ----------
    pvalues : ndarray
        (m,) raw p-values.

    Returns
    -------
    ndarray
        (m,) adjusted p-values, monotone in the raw order, capped at 1.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def benjamini_hochberg(pvalues: np.ndarray, *, dependent: bool = False) -> np.ndarray:
    """Benjamini–Hochberg (or Benjamini–Yekutieli with ``dependent=True``) q-values.

    Parameters
    ----------
    pvalues : ndarray
        (m,) raw p-values; NaNs are left out and stay NaN.
    dependent : bool
        Use the Benjamini–Yekutieli correction (valid under any dependence).

    Returns
    -------
    ndarray
        (m,) adjusted p-values.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    factor = m / np.arange(1, m + 1)
    if dependent:
        factor = factor * np.sum(1.0 / np.arange(1, m + 1))
    adj = np.minimum.accumulate((factor * q[order])[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def adjust_pvalues(pvalues: np.ndarray, method: str) -> np.ndarray:
    """Dispatch to ``holm``, ``bh``, ``by`` or ``none``."""
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "by":
        return benjamini_hochberg(pvalues, dependent=True)
    if method == "none":
        return np.asarray(pvalues, dtype=np.float64).copy()
    raise ValueError(f"unknown correction {method!r}: expected holm, bh, by or none")
