"""Streaming (Poisson) bootstrap: confidence intervals for statistics kept as mergeable running sums.

Each independent unit (image) enters every bootstrap resample ``r`` with a Poisson(1) count
instead of being drawn with replacement (Hanley & MacGibbon 2006; Chamandy et al. 2012). Counts
come from a generator derived from the unit's own key, so the replicates do not depend on how the
data is batched or sharded, and running sums over units stay O(R) per statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["percentile_interval", "poisson_counts"]


def poisson_counts(generators: Sequence[np.random.Generator], n_resamples: int) -> np.ndarray:
    """Poisson(1) resample counts, one column per unit.

    Parameters
    ----------
    generators : sequence of numpy.random.Generator
        B generators, one per unit (derived from the unit's key).
    n_resamples : int
        R, the number of bootstrap resamples.

    Returns
    -------
    ndarray
        (R, B) int64 counts.
    """
    if not generators:
        return np.zeros((n_resamples, 0), np.int64)
    return np.stack([g.poisson(1.0, n_resamples) for g in generators], axis=1)


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis, ignoring non-finite replicates.

    Parameters
    ----------
    replicates : ndarray
        (R, ...) bootstrap replicates of a statistic.
    confidence : float
        Two-sided level.

    Returns
    -------
    tuple of ndarray
        ``(low, high)`` of shape ``replicates.shape[1:]``; NaN where fewer than half of the
        replicates are finite.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    finite = np.isfinite(reps)
    alpha = (1.0 - confidence) / 2.0
    with np.errstate(all="ignore"):
        masked = np.where(finite, reps, np.nan)
        enough = finite.sum(axis=0) * 2 >= reps.shape[0]
        if not enough.any():
            nan = np.full(reps.shape[1:], np.nan)
            return nan, nan.copy()
        lo, hi = np.nanquantile(np.where(enough, masked, 0.0), [alpha, 1.0 - alpha], axis=0)
    return np.where(enough, lo, np.nan), np.where(enough, hi, np.nan)
