"""Calibration: importances and decision changes against randomly initialised copies and matched controls.

Nauta's raw importances are not comparable across characteristics: a contrast change moves almost
every activation of any network, a 35° hue shift moves few. Two corrections, measured on the
planted worlds of :mod:`explainkit.datasets.planted` (numbers in ``docs/prototypes.md``):

**Null of re-initialised copies** (``calibration="reinit"``). ``K`` copies of the model with every
parameter re-initialised (:func:`explainkit.adapters.randomize.randomized_copy`; ``"permute"``, the
default, shuffles each parameter tensor's values, ``"reset"`` calls each layer's
``reset_parameters``) are run through the same analysis on the same perturbed images. Per
characteristic ``c``, a copy's level ``L_jc`` is its weighted mean absolute local change ``|delta|``
over all prototypes and images; divided by the copy's mean level over characteristics and averaged
over copies it is the perturbation's *dose* ``R_c``: how strongly it moves this architecture's
features regardless of training, relative to the other perturbations (1 = an average one).
:mod:`explainkit.prototypes.relevance` divides decision changes and importances by it. Prototype
vectors are not meaningful in a re-initialised network, so the copies of vector, exemplar and
k-means adapters use exemplar prototypes pushed onto seeded random latent cells of probe images (a
post-hoc push in the untrained network).

**Matched controls** (``controls=True``). Pillow's contrast enhancer blends with a uniform grey,
``m + f (x - m)``; with luma ``L`` and chroma ``x - L`` this is *exactly* a luminance-contrast
change composed with Pillow's saturation enhancer at the same factor ``f``. The reference's
contrast perturbation therefore also removes ``1 - f = 55 %`` of the chroma, more than its
saturation perturbation (30 %), and any model that relies on colour reacts to it. The control
view ``saturation(f)`` is perturbed alongside, and the calibrated contrast importance is the
contrast importance minus its control's (what the luminance part adds).

**Headline statistics** (:func:`compare_with_null`). For a statistic ``A_c`` of the model (e.g. the
decision-weighted mean calibrated importance over prototypes) and the same statistic ``A_jc`` of
each copy, the calibrated value is ``A_c - mean_j A_jc`` (the copies' value, about 0 for trained
models, is what an untrained network shows). "The model relies most on X" needs X ahead of every
other characteristic Y: one-sided test of ``D = (A_X - A_Y) - mean_j (A_jX - A_jY)`` with variance
``Var_sampling(A_X - A_Y) + s²_XY (1 + 1/K)``, where ``s²_XY`` is the copies' variance of the
difference (the model itself could be one more draw from the null: a randomly initialised network
gets no confident headline), Student t with Welch–Satterthwaite degrees of freedom, Holm across the
``C - 1`` comparisons. Otherwise the characteristics not significantly behind X are reported as a
tie, each with the CI of its difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from explainkit.adapters.randomize import randomized_copy
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import ChannelPrototypes, PrototypeAdapter, exemplar_prototypes, read_latent
from explainkit.prototypes.perturb import Perturbation
from explainkit.stats import holm

__all__ = [
    "CALIBRATIONS",
    "CONTROLS",
    "NULL_KEEP_BYTES",
    "NULL_PROTOTYPES",
    "NullComparison",
    "NullCopy",
    "apply_controls",
    "compare_with_null",
    "control_perturbations",
    "model_bytes",
    "null_adapter",
    "null_handle",
]

#: Calibration methods (see the module docstring).
CALIBRATIONS = ("reinit", "none")
#: Characteristic → the characteristic whose perturbation at the same factor is its matched control.
CONTROLS = {"contrast": "saturation"}
#: Most exemplar prototypes pushed into each re-initialised copy of a vector-prototype model.
NULL_PROTOTYPES = 64


def control_perturbations(perturbations: Sequence[Perturbation]) -> tuple[list[Perturbation], list[tuple[int, int]]]:
    """The matched control views of the perturbations that have one.

    Parameters
    ----------
    perturbations : sequence of Perturbation
        The C analysed characteristics.

    Returns
    -------
    controls : list of Perturbation
        One extra perturbation per characteristic in :data:`CONTROLS` (same factor, same JPEG setting).
    pairs : list of (int, int)
        ``(characteristic column, control column)``; control columns follow the C characteristics.
    """
    controls, pairs = [], []
    for k, p in enumerate(perturbations):
        if p.name in CONTROLS:
            pairs.append((k, len(perturbations) + len(controls)))
            controls.append(Perturbation(CONTROLS[p.name], {"factor": p.params["factor"]}, p.jpeg, p.jpeg_quality))
    return controls, pairs


def apply_controls(values: np.ndarray, n_characteristics: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Subtract each control column from its characteristic and drop the control columns.

    Parameters
    ----------
    values : ndarray
        (..., C + n_controls) per-characteristic values (linear in the local changes: sums, means).
    n_characteristics : int
        C.
    pairs : sequence of (int, int)
        From :func:`control_perturbations`.

    Returns
    -------
    ndarray
        (..., C) controlled values.
    """
    out = np.array(values[..., :n_characteristics], dtype=np.float64, copy=True)
    for k, j in pairs:
        out[..., k] = out[..., k] - values[..., j]
    return out


#: Re-initialised copies stay in memory while all of them together take at most this many bytes of
#: parameters and buffers; larger models have theirs rebuilt from the seed at each use (measured: a
#: ResNet-50 copy takes 102 MB and 1.5 s of one core to rebuild with ``permute``).
NULL_KEEP_BYTES = 128 * 2**20


def null_handle(handle: ModelHandle, seed: int, mode: str = "permute") -> ModelHandle:
    """A copy of the model with re-initialised parameters, the same for the same ``seed``.

    ``mode``: see :func:`explainkit.adapters.randomize.randomized_copy`.

    Raises
    ------
    ConfigError
        The model cannot be copied or re-initialised (then use ``calibration="none"``).
    """
    try:
        module = randomized_copy(handle.module, seed, mode)
    except Exception as exc:  # deepcopy of exported programs, custom parameter types
        raise ConfigError(f"prototypes: cannot re-initialise a copy of this model for calibration ({exc}); "
                          "use calibration='none'") from None
    return dataclasses.replace(handle, module=module, sha256=None, load_notes={"null_copy_seed": seed})


@dataclasses.dataclass
class NullCopy:
    """A re-initialised copy of the model, as the calibration uses it.

    Attributes
    ----------
    seed : int
        Rebuilds the copy (:func:`null_handle`).
    adapter : PrototypeAdapter
        Reads the copy's prototypes (:func:`null_adapter`).
    rule : str
        The weight rule of ``adapter``.
    kept : ModelHandle or None
        The copy itself while the copies fit :data:`NULL_KEEP_BYTES`; ``None``: rebuilt at each use.
    """

    seed: int
    adapter: PrototypeAdapter
    rule: str
    kept: ModelHandle | None = None

    def handle(self, model: ModelHandle, mode: str) -> ModelHandle:
        """The copy of ``model`` (kept, or rebuilt with re-initialisation ``mode``)."""
        return self.kept if self.kept is not None else null_handle(model, self.seed, mode)


def model_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def null_adapter(adapter: PrototypeAdapter, model: ModelHandle | nn.Module, inputs: torch.Tensor, seed: int
                 ) -> PrototypeAdapter:
    """The adapter to read a re-initialised copy with.

    Channel prototypes read the same channels. Vector, exemplar and k-means prototypes become
    ``min(P, NULL_PROTOTYPES)`` exemplar prototypes at seeded random latent cells of ``inputs`` in
    the copy, compared with the adapter's similarity.

    Parameters
    ----------
    adapter : PrototypeAdapter
        The model's adapter (bound).
    model : ModelHandle or torch.nn.Module
        The re-initialised copy.
    inputs : torch.Tensor
        (N, 3, H, W) preprocessed probe images for the exemplar cells.
    seed : int
        Seeds the cells.

    Returns
    -------
    PrototypeAdapter
        A bound adapter.
    """
    if isinstance(adapter, ChannelPrototypes):
        return adapter
    layout = {"layout": adapter.layout, "grid": adapter.grid, "prefix_tokens": adapter.prefix_tokens}
    h, w = read_latent(model, inputs[:1], adapter.layer, **layout).shape[2:]
    rng = np.random.default_rng(seed)
    n = min(adapter.num_prototypes, NULL_PROTOTYPES)
    cells = [(int(rng.integers(len(inputs))), int(rng.integers(h)), int(rng.integers(w))) for _ in range(n)]
    similarity = getattr(adapter, "similarity", "log")
    return exemplar_prototypes(model, inputs, cells, adapter.layer, similarity=similarity, **layout)


@dataclasses.dataclass
class NullComparison:
    """A statistic of the model calibrated against re-initialised copies, and the headline test.

    Attributes
    ----------
    names : list of str
        The C characteristics.
    value : ndarray
        (C,) calibrated value ``A_c - mean_j A_jc``.
    ci_low, ci_high : ndarray
        (C,) confidence interval (sampling variance plus the standard error of the null mean).
    model : ndarray
        (C,) the model's statistic ``A_c``.
    null : ndarray
        (K, C) the copies' statistic.
    order : list of int
        Characteristics by decreasing calibrated value.
    comparisons : list of dict
        The first against each other characteristic: difference, CI, p, Holm-adjusted p, df.
    status : str
        ``"ahead"`` (the first is significantly ahead of all others), ``"tie"`` or ``"none"``
        (nothing above the null: every calibrated value's CI includes or is below 0).
    tied : list of str
        The first and the characteristics not significantly behind it (status ``tie``).
    """

    names: list[str]
    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    model: np.ndarray
    null: np.ndarray
    order: list[int]
    comparisons: list[dict[str, Any]]
    status: str
    tied: list[str]

    @property
    def first(self) -> str | None:
        """The first characteristic, or ``None`` when nothing is above the null."""
        return None if self.status == "none" else self.names[self.order[0]]


def _welch_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of variance parts ``(variance, df)``."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if v > 0 and np.isfinite(d))
    return float(total * total / denom) if denom > 0 else float("inf")


def compare_with_null(names: Sequence[str], model: np.ndarray, covariance: np.ndarray, sampling_df: float,
                      null: np.ndarray, *, alpha: float = 0.05, confidence: float = 0.95) -> NullComparison:
    """Calibrate a per-characteristic statistic against the copies and test whether the first is ahead.

    Parameters
    ----------
    names : sequence of str
        The C characteristics.
    model : ndarray
        (C,) the model's statistic ``A``.
    covariance : ndarray
        (C, C) sampling covariance of ``A`` (bootstrap or the paired per-image values).
    sampling_df : float
        Degrees of freedom of the sampling variance (``inf`` for a bootstrap).
    null : ndarray
        (K, C) the same statistic for K re-initialised copies (K = 0: no calibration; the
        comparison then rests on the sampling variance alone).
    alpha : float
        Level of the Holm-corrected one-sided tests.
    confidence : float
        Level of the intervals.

    Returns
    -------
    NullComparison
        Calibrated values, intervals, ranking and the headline test (see the module docstring).
    """
    a = np.asarray(model, np.float64)
    cov = np.asarray(covariance, np.float64)
    z = np.asarray(null, np.float64).reshape(-1, a.size)
    k = z.shape[0]
    null_mean = z.mean(0) if k else np.zeros_like(a)
    null_var = z.var(0, ddof=1) if k > 1 else np.zeros_like(a)
    value = a - null_mean
    var = np.diag(cov) + (null_var / k if k else 0.0)
    df = np.array([_welch_df([(cov[i, i], sampling_df), (null_var[i] / k if k else 0.0, k - 1)])
                   for i in range(a.size)])
    half = stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(var)
    lo, hi = value - half, value + half
    finite = np.isfinite(value)
    order = [int(i) for i in np.argsort(-np.where(finite, value, -np.inf), kind="stable")]
    top = order[0]
    comps, pvals = [], []
    for j in order[1:]:
        diffs = z[:, top] - z[:, j]
        spread = float(diffs.var(ddof=1)) if k > 1 else 0.0
        sampling = float(cov[top, top] + cov[j, j] - 2 * cov[top, j])
        parts = [(sampling, sampling_df), (spread * (1 + 1 / k) if k else 0.0, k - 1)]
        d = float(value[top] - value[j])
        sd = float(np.sqrt(max(sum(v for v, _ in parts), 0.0)))
        dof = _welch_df(parts)
        p = float(stats.t.sf(d / sd, dof)) if sd > 0 else (0.0 if d > 0 else 1.0)
        t_half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * sd
        comps.append({"other": names[j], "difference": d, "ci_low": d - t_half, "ci_high": d + t_half,
                      "p": p, "df": dof})
        pvals.append(p)
    adjusted = holm(np.asarray(pvals, np.float64)) if pvals else np.zeros(0)
    for c, q in zip(comps, adjusted):
        c["p_holm"] = float(q)
        c["significant"] = bool(q < alpha)
    if not finite[top] or lo[top] <= 0:
        status, tied = "none", []
    elif all(c["significant"] for c in comps):
        status, tied = "ahead", [names[top]]
    else:
        status, tied = "tie", [names[top]] + [c["other"] for c in comps if not c["significant"]]
    return NullComparison(list(names), value, lo, hi, a, z, order, comps, status, tied)
