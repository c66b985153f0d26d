"""What the model relies on: calibrated decision relevance and calibrated prototype importances.

Two calibrated views of one analysis, both compared with the re-initialised copies and tested with
:func:`explainkit.prototypes.calibration.compare_with_null`:

* **decision relevance** (the headline, :func:`decision_relevance`): per image, the absolute change
  of the target's log-probability under each perturbation (:mod:`explainkit.prototypes.decision`),
  matched controls applied, divided by the perturbation's dose in untrained copies; per target
  class the mean over its images, overall the class-balanced mean (each class weighs the same).
  Sampling covariance from the paired per-image values (the characteristics are compared on the
  same images).
* **prototype importances**: each prototype's global importance relative to the
  network's overall sensitivity, divided by the same profile of the copies
  (:func:`prototype_relevance`); across prototypes the decision-weighted mean (weights: each
  prototype's mean positive contribution to the target logit; equal weights without a decision
  link).
  Sampling covariance from a two-level bootstrap: the Poisson bootstrap over images that the
  global scores already carry, and a multinomial resample of the prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from explainkit.prototypes.calibration import NullComparison, apply_controls, compare_with_null
from explainkit.prototypes.decision import DecisionRows, class_means
from explainkit.prototypes.importance import SplitAccumulator
from explainkit.stats.streaming import percentile_interval

__all__ = ["decision_relevance", "levels", "prototype_relevance"]


def levels(acc: SplitAccumulator) -> np.ndarray:
    """(C',) weighted mean absolute local change per view over all prototypes and images (NaN without weight)."""
    w = acc.sum_w.sum()
    return acc.sum_wabs.sum(0) / w if w > 0 else np.full(acc.sum_wabs.shape[1], np.nan)


def _weights(acc: SplitAccumulator, valid: np.ndarray) -> np.ndarray:
    """Normalised decision weights of the valid prototypes (equal when no prototype has a contribution)."""
    w = np.where(valid, np.maximum(acc.sum_contrib, 0.0), 0.0)
    if w.sum() <= 0:
        w = valid.astype(np.float64)
    return w / w.sum() if w.sum() > 0 else w


def _global(acc: SplitAccumulator, c: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(P, C) controlled global importances of an accumulator."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return apply_controls(np.where(acc.sum_w[:, None] > 0, acc.sum_wd / acc.sum_w[:, None], np.nan), c, pairs)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    rows = np.isfinite(values).all(1) & (weights > 0)
    w = weights[rows]
    return (w[:, None] * values[rows]).sum(0) / w.sum() if w.sum() > 0 else np.full(values.shape[1], np.nan)


def prototype_relevance(acc: SplitAccumulator, nulls: Sequence[SplitAccumulator], names: Sequence[str],
                        pairs: Sequence[tuple[int, int]], *, seed: int, alpha: float) -> dict[str, Any]:
    """Calibrated prototype importances and their decision-weighted comparison with the copies.

    Every network ``n`` (the model, each copy) has a level ``L_nc`` per characteristic (weighted
    mean ``|delta|``) and an overall sensitivity ``s_n`` (the mean level over characteristics). The
    copies' relative profile is ``R_c = mean_j L_jc / s_j``. A network's calibrated importance is
    ``importance / (s_n R_c)``: its importance relative to its own overall sensitivity, divided by
    what an untrained network shows relative to its own. Scales cancel (trained networks respond
    more strongly to everything; initialisation schemes differ), so a model drawn from the null
    gets values like the copies'.

    Parameters
    ----------
    acc : SplitAccumulator
        The model's sums over all images (C' columns: characteristics then control views).
    nulls : sequence of SplitAccumulator
        One per copy, over the same images, same columns.
    names : sequence of str
        The C characteristics.
    pairs : sequence of (int, int)
        Characteristic and control columns (:func:`~explainkit.prototypes.calibration.control_perturbations`).
    seed : int
        Seeds the prototype resampling.
    alpha : float
        Level of the headline tests.

    Returns
    -------
    dict
        ``score`` (P, C) controlled global importances, ``calibrated`` (P, C) with its image-
        bootstrap interval ``ci_low``/``ci_high``, ``profile`` (C,) the copies' relative levels
        ``R`` and ``profiles`` (K, C) per copy, ``sensitivity`` the model's ``s``, ``weights`` (P,)
        and ``comparison`` (:class:`NullComparison` of the decision-weighted means).
    """
    c = len(names)
    score = _global(acc, c, pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = apply_controls(np.where(acc.boot_w[..., None] > 0, acc.boot_wd / acc.boot_w[..., None], np.nan),
                              c, pairs)
    own = levels(acc)[:c]
    sensitivity = float(np.nanmean(own)) if np.isfinite(own).any() else float("nan")
    null_levels = np.array([levels(z)[:c] for z in nulls]).reshape(len(nulls), c)
    profiles = null_levels / np.nanmean(null_levels, 1, keepdims=True) if len(nulls) else np.ones((0, c))
    profile = np.nanmean(profiles, 0) if len(nulls) else np.ones(c)
    ok_scale = np.isfinite(profile) & (profile > 0) & np.isfinite(sensitivity) & (sensitivity > 0)
    scale = np.where(ok_scale, sensitivity * profile, np.nan)
    calibrated, boot_cal = score / scale, boot / scale
    valid = np.isfinite(calibrated).all(1)
    weights = _weights(acc, valid)
    model = _weighted_mean(calibrated, weights)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(valid)
    draws = np.full((boot_cal.shape[0], c), np.nan)
    for i in range(boot_cal.shape[0]):  # images (the Poisson counts behind boot) × prototypes (multinomial)
        counts = np.bincount(rng.choice(idx, size=idx.size), minlength=weights.size) if idx.size else 0.0
        draws[i] = _weighted_mean(boot_cal[i], counts * weights)
    ok = np.isfinite(draws).all(1)
    cov = np.cov(draws[ok], rowvar=False).reshape(c, c) if ok.sum() > 2 else np.full((c, c), np.nan)
    null_stats = []
    for z, lv in zip(nulls, null_levels):
        g = _global(z, c, pairs) / (np.nanmean(lv) * profile)
        null_stats.append(_weighted_mean(g, _weights(z, np.isfinite(g).all(1))))
    comparison = compare_with_null(names, model, cov, np.inf, np.asarray(null_stats).reshape(len(nulls), c),
                                   alpha=alpha)
    # a prototype with no weight on any probe image (a dead channel) or a characteristic without a
    # scale has no finite replicate: its calibrated importance and interval are null, as for the
    # uncalibrated interval (percentile_interval: NaN unless half the replicates are finite)
    finite = np.isfinite(calibrated)
    lo, hi = percentile_interval(boot_cal) if boot_cal.shape[0] else (np.full_like(calibrated, np.nan),) * 2
    return {"score": score, "calibrated": calibrated, "ci_low": np.where(finite, lo, np.nan),
            "ci_high": np.where(finite, hi, np.nan), "profile": profile, "profiles": profiles,
            "sensitivity": sensitivity, "weights": weights, "comparison": comparison}


def decision_relevance(rows: DecisionRows, names: Sequence[str], pairs: Sequence[tuple[int, int]],
                       profile: np.ndarray, profiles: np.ndarray, *, alpha: float) -> dict[str, Any]:
    """Calibrated decision relevance ("potency") per target class and overall (class-balanced).

    Per image, the change of the target's log-probability under each perturbation, in either
    direction (``|dlogp|``: a perturbation that makes the target more likely also shows that the
    decision depends on the characteristic), minus the same for the matched control, is divided by
    the perturbation's *dose* ``R_c``: how strongly it moves the features of
    untrained copies of the architecture relative to the other perturbations (the copies' relative
    profile, :func:`prototype_relevance`; 1 = an average perturbation). The copies' own decision
    changes, divided alike, are the null. The uncertainty of ``R_c`` (its spread over the copies)
    is added to the sampling variance by the delta method.

    Parameters
    ----------
    rows : DecisionRows
        Per-image changes of the model and of the copies (C' columns: characteristics, then controls).
    names : sequence of str
        The C characteristics.
    pairs : sequence of (int, int)
        Characteristic and control columns.
    profile : ndarray
        (C,) the copies' mean relative profile (ones without copies).
    profiles : ndarray
        (K, C) per copy.
    alpha : float
        Level of the headline tests.

    Returns
    -------
    dict
        ``classes`` (list of int), ``counts``, ``per_class`` (list of :class:`NullComparison`),
        ``overall`` (:class:`NullComparison` of the class-balanced mean), and the uncalibrated
        means of the log-probability and logit drops per view with their standard errors
        (``raw_log_prob``, ``raw_logit``, (G, C') each, and ``*_se``).
    """
    c = len(names)
    dose = np.where(np.isfinite(profile) & (profile > 0), profile, np.nan)
    values = apply_controls(np.abs(rows.delta_log_prob), c, pairs) / dose  # (n, C)
    null_values = apply_controls(np.abs(rows.null_delta_log_prob), c, pairs) / dose  # (n, K, C)
    k = null_values.shape[1]
    rel_var = profiles.var(0, ddof=1) / (k * dose**2) if k > 1 else np.zeros(c)  # squared relative SE of the dose
    classes, means, covs, counts = class_means(values, rows.target)
    per_class: list[NullComparison] = []
    null_means = np.zeros((len(classes), k, c))
    for g, cls in enumerate(classes):
        null_means[g] = null_values[rows.target == cls].mean(0)
        cov = covs[g] + np.diag(means[g] ** 2 * rel_var)
        per_class.append(compare_with_null(names, means[g], cov, max(int(counts[g]) - 1, 1), null_means[g],
                                           alpha=alpha))
    n_groups = len(classes)
    balanced = means.mean(0)
    cov = covs.sum(0) / n_groups**2 + np.diag(balanced**2 * rel_var)
    overall = compare_with_null(names, balanced, cov, max(int(counts.sum()) - n_groups, 1), null_means.mean(0),
                                alpha=alpha)
    out: dict[str, Any] = {"classes": classes, "counts": counts, "per_class": per_class, "overall": overall}
    for key, v in (("raw_log_prob", rows.delta_log_prob), ("raw_logit", rows.delta_logit)):
        _, m, cv, _ = class_means(v, rows.target)
        out[key] = m
        out[f"{key}_se"] = np.sqrt(np.maximum(np.diagonal(cv, axis1=1, axis2=2), 0.0))
    return out
