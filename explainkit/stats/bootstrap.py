"""Bootstrap confidence intervals over images (the independent unit), seeded and chunked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_ci", "bootstrap_diff_ci", "bootstrap_distribution"]

_CHUNK_ELEMENTS = 4_000_000


def _statistic(name: str | Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    if callable(name):
        return name
    if name == "mean":
        return lambda x: x.mean(axis=-1)
    if name == "median":
        return lambda x: np.median(x, axis=-1)
    raise ValueError(f"unknown statistic {name!r}")


def bootstrap_distribution(
    values: np.ndarray,
    statistic: str | Callable[[np.ndarray], np.ndarray] = "mean",
    *,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Statistic of ``n_resamples`` resamples (with replacement) of ``values``.

    Parameters
    ----------
    values : ndarray
        (n,) one value per independent unit (image).
    statistic : {"mean", "median"} or callable
        A callable takes (r, n) resamples and returns (r,).
    n_resamples : int
        Number of resamples.
    seed : int or numpy.random.Generator
        Randomness.

    Returns
    -------
    ndarray
        (n_resamples,) bootstrap replicates.
    """
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    stat = _statistic(statistic)
    out = np.empty(n_resamples)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        out[start : start + r] = stat(values[idx])
    return out


def bootstrap_ci(
    values: np.ndarray,
    statistic: str | Callable[[np.ndarray], np.ndarray] = "mean",
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval.

    Parameters
    ----------
    values : ndarray
        (n,) one value per independent unit.
    statistic : {"mean", "median"} or callable
        See :func:`bootstrap_distribution`.
    confidence : float
        Two-sided level, e.g. 0.95.
    n_resamples : int
        Number of resamples.
    seed : int or numpy.random.Generator
        Randomness.

    Returns
    -------
    tuple of float
        ``(low, high)``; ``(nan, nan)`` for empty input; ``(v, v)`` when all values are equal.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        v = float(_statistic(statistic)(values[None, :])[0])
        return v, v
    reps = bootstrap_distribution(values, statistic, n_resamples=n_resamples, seed=seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_diff_ci(
    a: np.ndarray,
    b: np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """CI of ``mean(a) - mean(b)`` for two independent groups (each resampled within itself).

    Parameters
    ----------
    a, b : ndarray
        (n_a,), (n_b,) values of two independent groups.
    confidence : float
        Two-sided level.
    n_resamples : int
        Number of resamples.
    seed : int or numpy.random.Generator
        Randomness.

    Returns
    -------
    tuple of float
        ``(low, high)``, or NaNs when a group is empty.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ra = bootstrap_distribution(a, "mean", n_resamples=n_resamples, seed=rng)
    rb = bootstrap_distribution(b, "mean", n_resamples=n_resamples, seed=rng)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ra - rb, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
