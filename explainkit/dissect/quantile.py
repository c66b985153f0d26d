"""Exact, mergeable top-quantile thresholds: keep each unit's K largest values, nothing else.

Network Dissection thresholds unit ``u`` at the ``1 − q`` quantile of its activations over every
image and feature-map position (q = 0.005). The reference streams the values through an
approximate quantile sketch; here the threshold is exact and still mergeable across shards: with
M values per unit in all, the linear-interpolation quantile (NumPy's default, Hyndman & Fan type 7)
only reads the two order statistics around rank ``(M − 1)(1 − q)``, both among the
``K = ⌊q (M − 1)⌋ + 2`` largest values. The K largest values of a union are the K largest of the
parts' K largest values, so merging is a union followed by a top-K selection (associative and
commutative). Memory: K values per unit (K = 247 for 1,000 images of 7×7 maps).
"""

from __future__ import annotations

import numpy as np
import torch

from explainkit.errors import ConfigError, DataError

__all__ = ["merge_top", "quantile_threshold", "top_k_size", "top_values"]


def top_k_size(n_values: int, quantile: float) -> int:
    """How many of the largest values the ``1 − quantile`` quantile of ``n_values`` values needs.

    Parameters
    ----------
    n_values : int
        M, the number of values per unit over the whole probe set (images × positions).
    quantile : float
        q, the top share (0.005 in Network Dissection).

    Returns
    -------
    int
        ``⌊q (M − 1)⌋ + 2`` (at most M).
    """
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), not {quantile!r}")
    if n_values < 1:
        raise DataError("no activation values")
    return int(min(n_values, np.floor(quantile * (n_values - 1)) + 2))


def top_values(values: torch.Tensor, k: int) -> np.ndarray:
    """The ``k`` largest values of every unit, descending, padded with ``-inf``.

    Parameters
    ----------
    values : torch.Tensor
        (D, n) values of D units.
    k : int
        How many to keep.

    Returns
    -------
    ndarray
        (D, k) float32.
    """
    d, n = values.shape
    out = np.full((d, k), -np.inf, np.float32)
    if n:
        top = torch.topk(values.float(), min(k, n), dim=1, largest=True, sorted=True).values
        out[:, : top.shape[1]] = top.cpu().numpy()
    return out


def merge_top(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Top-k of the union of two (D, k) descending top-k arrays, (D, k) descending."""
    both = np.concatenate([a, b], axis=1)
    k = a.shape[1]
    part = -np.partition(-both, k - 1, axis=1)[:, :k] if both.shape[1] > k else both
    return -np.sort(-part, axis=1)


def quantile_threshold(top: np.ndarray, n_values: int, quantile: float) -> np.ndarray:
    """The ``1 − quantile`` quantile of each unit's values from its largest values.

    Identical to ``np.quantile(all_values, 1 - quantile, axis=...)`` (linear interpolation) when
    ``top`` holds at least :func:`top_k_size` values.

    Parameters
    ----------
    top : ndarray
        (D, K) the K largest values per unit, descending.
    n_values : int
        M, how many values each unit had in all.
    quantile : float
        q.

    Returns
    -------
    ndarray
        (D,) thresholds in ``top``'s dtype.

    Raises
    ------
    DataError
        When ``top`` holds fewer values than the quantile needs.
    """
    need = top_k_size(n_values, quantile)
    if top.shape[1] < need:
        raise DataError(f"{top.shape[1]} largest values kept, the quantile of {n_values} values needs {need}")
    level = 1.0 - quantile
    virtual = n_values * level + (1.0 - level) - 1  # NumPy's "linear" virtual index, ascending order
    below = int(np.floor(virtual))
    above = min(below + 1, n_values - 1)
    gamma = virtual - below
    a = top[:, n_values - 1 - below]  # ascending rank r is descending rank M-1-r
    b = top[:, n_values - 1 - above]
    diff = b - a  # interpolated in the values' dtype, with gamma a (weak) Python float, as NumPy does
    return b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma
