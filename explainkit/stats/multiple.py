"""Multiple-comparison corrections: Holm (FWER) and Benjamini–Hochberg / –Yekutieli (FDR)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["adjust_pvalues", "benjamini_hochberg", "holm"]


def _on_finite(pvalues: np.ndarray, sorted_adjust: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``sorted_adjust`` to the ascending finite p-values; NaNs are left out and stay NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    if q.size:
        order = np.argsort(q, kind="stable")
        res = np.empty(q.size)
        res[order] = np.minimum(sorted_adjust(q[order]), 1.0)
        out[ok] = res
    return out


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

    def step_down(q: np.ndarray) -> np.ndarray:
        return np.maximum.accumulate((q.size - np.arange(q.size)) * q)

    return _on_finite(pvalues, step_down)


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

    def step_up(q: np.ndarray) -> np.ndarray:
        m = q.size
        factor = m / np.arange(1, m + 1)
        if dependent:
            factor = factor * np.sum(1.0 / np.arange(1, m + 1))
        return np.minimum.accumulate((factor * q)[::-1])[::-1]

    return _on_finite(pvalues, step_up)


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
