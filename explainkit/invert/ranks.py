"""Ranks once per neuron, then every AUROC is a rank sum.

For a mask with ``n`` positives among ``N`` samples and average ranks ``r`` (ties share the mean
rank), the positives' rank sum ``S`` gives Mann–Whitney's ``U = S − n(n+1)/2`` and
``AUROC = U / (n (N − n))`` exactly, ties counted ½. Average ranks are multiples of ½, so rank
sums are exact in float64 up to 2**52 (N up to ~10**8), and masks built by AND/OR/NOT from
others get their ``(S, n)`` by inclusion–exclusion, without touching the samples again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc_from_rank_sums", "differentiability_from_rank_sums", "rank_block"]


def rank_block(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and tie terms of every column.

    Parameters
    ----------
    values : ndarray
        (N, D) activations of D neurons.

    Returns
    -------
    ranks : ndarray
        (N, D) float64 average ranks per column (as ``scipy.stats.rankdata(method="average")``),
        column-major so that each neuron's ranks are contiguous.
    ties : ndarray
        (D,) Σ (t³ − t) over groups of tied values per column (Mann–Whitney tie correction).
    """
    a = np.ascontiguousarray(np.asarray(values).T)  # (D, N): one neuron per contiguous row
    d, n = a.shape
    order = np.argsort(a, axis=1)  # the order among ties does not change average ranks
    s = np.take_along_axis(a, order, axis=1)
    first = np.ones((d, n), dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    last = np.ones((d, n), dtype=bool)
    last[:, :-1] = first[:, 1:]
    pos = np.arange(n, dtype=np.int64)
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((d, n), dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end).astype(np.float64) / 2.0 + 1.0, axis=1)
    t = np.where(first, end - start + 1, 0).astype(np.float64)
    return ranks.T, np.sum(t**3 - t, axis=1)


def auroc_from_rank_sums(s: np.ndarray, n: np.ndarray, n_total: int) -> np.ndarray:
    """AUROC from the positives' rank sum ``s`` and count ``n`` (NaN when ``n`` is 0 or ``n_total``).

    Parameters
    ----------
    s : ndarray
        Rank sums (any shape).
    n : ndarray
        Positive counts (broadcastable to ``s``).
    n_total : int
        N.

    Returns
    -------
    ndarray
        ``(s − n(n+1)/2) / (n (N − n))``, one correctly rounded division of exact numbers.
    """
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (s - n * (n + 1.0) / 2.0) / (n * (n_total - n))


def differentiability_from_rank_sums(s: np.ndarray, n: np.ndarray, n_total: int) -> np.ndarray:
    """``2 |AUROC − ½|`` computed as ``|2s − n(N+1)| / (n (N − n))``, exactly symmetric in c / ¬c."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(2.0 * s - n * (n_total + 1.0)) / (n * (n_total - n))
