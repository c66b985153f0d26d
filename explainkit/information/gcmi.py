"""Gaussian-copula mutual information (Ince et al., Human Brain Mapping 2017) between activations and factors.

Each activation is copula-normalised (its empirical CDF value pushed through the inverse normal
CDF), then the mutual information with a discrete factor F is estimated under a Gaussian model per
factor level:

    I(X; F) = H(X) − Σ_f p(f) H(X | F = f),     H = ½ log det(2πe Σ) − bias(n, d),

with the analytic bias correction of a Gaussian entropy estimated from n samples in d dimensions,
bias(n, d) = d (ln 2 − ln(n − 1)) / 2 + Σ_{i=1..d} ψ((n − i) / 2) / 2 (as ``gcmi``'s
``mi_model_gd``). The result is a lower bound on the true MI, in bits, close to zero on average
under independence (it can be slightly negative).

Everything is vectorised over many "groupings" at once: a (B, n, K) tensor ``G`` of per-sample level
weights describes B variants of the factor — permutations of its labels (null distribution) or
bootstrap weights (confidence intervals) — so a whole test costs a few matrix products.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy.stats import rankdata

from explainkit.errors import DataError

__all__ = ["bias", "copnorm", "factor_entropy", "groupings", "layer_mi", "one_hot", "resampling_plan", "unit_mi"]

_LN2 = np.log(2.0)


def copnorm(x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Copula-normalise each column: ranks / (n + 1) through the inverse standard normal CDF.

    Parameters
    ----------
    x : ndarray
        (n, D) values.
    rng : numpy.random.Generator, optional
        Breaks ties at random (e.g. ReLU zeros), as the reference breaks them by sample order;
        without it ties keep their average rank.

    Returns
    -------
    ndarray
        (n, D) float64 standard-normal scores.
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if rng is None:
        ranks = rankdata(x, axis=0, method="average")
    else:
        key = rng.random(x.shape)
        order = np.lexsort((key, x), axis=0)
        ranks = np.empty_like(x)
        np.put_along_axis(ranks, order, np.arange(1, n + 1, dtype=np.float64)[:, None].repeat(x.shape[1], 1), 0)
    return special.ndtri(ranks / (n + 1.0))


def bias(n: np.ndarray | float, d: int) -> np.ndarray:
    """Analytic bias of a Gaussian entropy (nats) estimated from ``n`` samples in ``d`` dimensions."""
    n = np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        psi = sum(special.psi((n - i) / 2.0) / 2.0 for i in range(1, d + 1))
        return d * (np.log(2.0) - np.log(n - 1.0)) / 2.0 + psi


def one_hot(labels: np.ndarray, n_levels: int | None = None) -> np.ndarray:
    """(n,) integer levels → (n, K) float64 one-hot."""
    labels = np.asarray(labels, np.int64)
    k = int(labels.max()) + 1 if n_levels is None else n_levels
    out = np.zeros((labels.size, k))
    out[np.arange(labels.size), labels] = 1.0
    return out


def groupings(labels: np.ndarray, permutations: np.ndarray | None = None, weights: np.ndarray | None = None
              ) -> np.ndarray:
    """Observed, permuted and bootstrap-weighted level indicators of a factor.

    Parameters
    ----------
    labels : ndarray
        (n,) integer levels.
    permutations : ndarray, optional
        (P, n) sample permutations; grouping p takes the labels in the order ``labels[perm_p]``.
    weights : ndarray, optional
        (R, n) bootstrap image weights (multinomial counts; labels kept).

    Returns
    -------
    ndarray
        (1 + P + R, n, K): the observed grouping first, then the permuted ones, then the weighted ones.
    """
    y = one_hot(labels)
    out = [y[None]]
    if permutations is not None and len(permutations):
        out.append(y[np.asarray(permutations)])
    if weights is not None and len(weights):
        out.append(np.asarray(weights, np.float64)[:, :, None] * y[None])
    return np.concatenate(out)


def resampling_plan(n: int, permutations: int, resamples: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Shared permutations (P, n) and bootstrap weights (R, n) for every factor and layer of a run."""
    perms = np.stack([rng.permutation(n) for _ in range(permutations)]) if permutations else np.zeros((0, n), int)
    weights = (np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(float)
               if resamples else np.zeros((0, n)))
    return perms, weights


def factor_entropy(labels: np.ndarray) -> float:
    """Plug-in entropy of a discrete factor in bits (the most information a representation can carry)."""
    p = np.bincount(np.asarray(labels, np.int64)) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def unit_mi(z: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Bias-corrected Gaussian MI (bits) between each column of ``z`` and a factor, for every grouping.

    Parameters
    ----------
    z : ndarray
        (n, D) copula-normalised activations (one unit per column).
    g : ndarray
        (B, n, K) level weights from :func:`groupings` (integer weights: 0/1 or bootstrap counts).

    Returns
    -------
    ndarray
        (B, D) MI in bits; NaN where a level has fewer than two (weighted) samples.
    """
    b, n, k = g.shape
    gt = g.transpose(0, 2, 1).reshape(b * k, n)
    c = gt.sum(1).reshape(b, k)
    s1 = (gt @ z).reshape(b, k, -1)
    s2 = (gt @ (z * z)).reshape(b, k, -1)
    ct = c.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_k = (s2 - s1 * s1 / c[:, :, None]) / (c[:, :, None] - 1.0)
        var_t = (s2.sum(1) - s1.sum(1) ** 2 / ct[:, None]) / (ct[:, None] - 1.0)
        h_unc = 0.5 * np.log(var_t) - bias(ct, 1)[:, None]
        h_con = 0.5 * np.log(var_k) - bias(c, 1)[:, :, None]
        mi = (h_unc - np.sum(c[:, :, None] / ct[:, None, None] * h_con, axis=1)) / _LN2
    bad = np.any(c < 2, axis=1)
    mi[bad] = np.nan
    return mi


def layer_mi(z: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gaussian-mixture MI (bits) between the rows of ``z`` (one vector each) and a factor, for every grouping.

    The univariate model of :func:`unit_mi` is a lower bound because a copula-normalised variable
    is exactly Gaussian; a vector of copula-normalised components is Gaussian only marginally, and
    the single-Gaussian model then overstates the information (beyond the factor's entropy when the
    levels separate). As Ince et al. (2017) do for this case, the unconditional distribution is
    modelled as the mixture Σ_k p_k N(μ_k, Σ_k) of the level-wise Gaussians, its entropy taken with
    the unscented transform (2d sigma points μ_k ± √d · columns of chol(Σ_k)), and

        I = H(mixture) − Σ_k p_k H(N(μ_k, Σ_k)),

    which tends to the factor's entropy when the levels separate. It has no analytic bias
    correction; :func:`~explainkit.information.api.factor_information` subtracts the mean of its
    permutation null (shuffle correction).

    Parameters
    ----------
    z : ndarray
        (n, d) copula-normalised representation (e.g. a layer's leading principal components).
    g : ndarray
        (B, n, K) level weights from :func:`groupings`.

    Returns
    -------
    ndarray
        (B,) MI in bits; NaN where a level has at most ``d`` (weighted) samples.

    Raises
    ------
    DataError
        When ``z`` has no columns.
    """
    n, d = z.shape
    if d == 0:
        raise DataError("an empty representation has no mutual information")
    c = g.sum(1)  # (B, K)
    ct = c.sum(1)
    ok = np.all(c > d, axis=1)
    safe_c = np.where(c > 1, c, 2.0)
    b_, _, k_ = g.shape
    gt = g.transpose(0, 2, 1).reshape(b_ * k_, n)
    s1 = (gt @ z).reshape(b_, k_, d)
    s2 = (gt @ (z[:, :, None] * z[:, None, :]).reshape(n, d * d)).reshape(b_, k_, d, d)
    mean = s1 / safe_c[..., None]
    cov = (s2 - s1[..., :, None] * mean[..., None, :]) / (safe_c[..., None, None] - 1.0)
    eye = np.eye(d)
    cov = np.where(ok[:, None, None, None], cov, eye) + 1e-12 * eye
    chol = np.linalg.cholesky(cov)  # (B, K, d, d)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)  # (B, K)
    h_comp = 0.5 * logdet + 0.5 * d * (np.log(2.0 * np.pi) + 1.0)
    p = c / ct[:, None]
    spread = np.sqrt(d) * np.swapaxes(chol, -1, -2)  # rows = columns of chol
    points = np.concatenate([mean[:, :, None, :] + spread, mean[:, :, None, :] - spread], axis=2)  # (B,K,2d,d)
    pts = points.reshape(b_, k_ * 2 * d, d)
    diff = pts[:, None, :, :] - mean[:, :, None, :]  # (B, K comps, P, d)
    sol = np.einsum("bkij,bkpj->bkpi", np.linalg.inv(chol), diff, optimize=True)  # L⁻¹(x − μ)
    log_pdf = -0.5 * (sol**2).sum(-1) - 0.5 * logdet[..., None] - 0.5 * d * np.log(2.0 * np.pi)
    with np.errstate(divide="ignore"):
        log_mix = np.log(np.einsum("bk,bkp->bp", p, np.exp(log_pdf - log_pdf.max(1, keepdims=True)))) \
            + log_pdf.max(1)
    h_mix = -np.einsum("bk,bkp->b", p, log_mix.reshape(b_, k_, 2 * d)) / (2 * d)
    mi = (h_mix - (p * h_comp).sum(1)) / _LN2
    mi[~ok] = np.nan
    return mi
