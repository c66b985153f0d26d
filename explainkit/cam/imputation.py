"""Noisy linear imputation (ROAD; Rong et al., ICML 2022).

Removed pixels are filled so that each equals the weighted mean of its 8 neighbours (weight 1/6
for the 4 direct, 1/12 for the 4 diagonal neighbours, renormalised at the image border), solved
jointly as one sparse linear system per image (the same matrix for every channel), then small
Gaussian noise is added. Unlike zero, mean or blur fills, the filled region carries no trace of the
removal mask's shape, so the mask cannot leak class information.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu

from explainkit.errors import ConfigError

__all__ = ["NEIGHBOURS", "impute"]

#: (dy, dx, weight) of the 8-neighbourhood.
NEIGHBOURS = (
    (-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
    (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12),
)


def impute(image: np.ndarray, remove: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """Fill the pixels of ``image`` marked in ``remove`` by linear interpolation from neighbours.

    For every removed pixel ``p`` with in-image neighbours ``N(p)``:
    ``(sum_{q in N(p)} w_q) v_p - sum_{q removed} w_q v_q = sum_{q kept} w_q x_q``.

    Parameters
    ----------
    image : ndarray
        (C, H, W) values.
    remove : ndarray
        (H, W) bool, True where the pixel is removed; at least one pixel must be kept.
    noise : ndarray, optional
        (C, H, W) values added to the imputed pixels only (e.g. N(0, 0.01^2) draws).

    Returns
    -------
    ndarray
        (C, H, W) float64 image with the removed pixels imputed.
    """
    img = np.asarray(image, dtype=np.float64)
    c, h, w = img.shape
    remove = np.asarray(remove, dtype=bool)
    if remove.shape != (h, w):
        raise ConfigError(f"mask shape {remove.shape} does not match image {(h, w)}")
    out = img.copy()
    n = int(remove.sum())
    if n == 0:
        return out
    if n == h * w:
        raise ConfigError("cannot impute an image with every pixel removed")
    ys, xs = np.nonzero(remove)
    var = np.full((h, w), -1, dtype=np.int64)
    var[ys, xs] = np.arange(n)
    flat = img.reshape(c, -1)
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    for dy, dx, wt in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        eq = np.nonzero(inside)[0]
        qy, qx = ny[inside], nx[inside]
        diag[eq] += wt
        unknown = var[qy, qx] >= 0
        rows.append(eq[unknown])
        cols.append(var[qy[unknown], qx[unknown]])
        vals.append(np.full(int(unknown.sum()), -wt))
        known = ~unknown
        np.add.at(rhs, eq[known], wt * flat[:, qy[known] * w + qx[known]].T)
    matrix = csc_matrix((np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    # the matrix is symmetric (equal weights both ways): a symmetric ordering halves the fill-in
    lu = splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    solved = lu.solve(rhs).reshape(n, c)
    if noise is not None:
        solved = solved + np.asarray(noise, dtype=np.float64)[:, ys, xs].T
    out[:, ys, xs] = solved.T
    return out
