"""Statistics of prototype explanations.

Global scores with bootstrap CIs, per-prototype tests, train vs test agreement, redundancy groups
and verdicts in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from explainkit.prototypes.importance import SplitAccumulator
from explainkit.stats import benjamini_hochberg, holm, wilcoxon_signed_rank
from explainkit.stats.streaming import percentile_interval
from explainkit.stats.twosample import spearman_correlation, welch_t_test

__all__ = ["GlobalScores", "generalisation", "global_scores", "local_tests", "redundancy_groups", "verdict"]


@dataclass
class GlobalScores:
    """Global importances of one split.

    Attributes
    ----------
    score : ndarray
        (P, C) similarity-weighted mean local importance (NaN where all weights are 0).
    ci_low, ci_high : ndarray
        (P, C) percentile interval of the Poisson bootstrap over images.
    relative : ndarray
        (P, C) the relative view: ``sum w·delta / sum w·s`` (fraction of the weighted mean
        original similarity; NaN unless that is > 0).
    mean_weight : ndarray
        (P,) mean weight per image (how strongly the prototype is present in the split).
    n : int
        Images in the split.
    """

    score: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    relative: np.ndarray
    mean_weight: np.ndarray
    n: int


def global_scores(acc: SplitAccumulator, confidence: float = 0.95) -> GlobalScores:
    """Global scores and bootstrap intervals from a split's running sums."""
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(acc.sum_w[:, None] > 0, acc.sum_wd / acc.sum_w[:, None], np.nan)
        boot = np.where(acc.boot_w[..., None] > 0, acc.boot_wd / acc.boot_w[..., None], np.nan)
        relative = np.where(acc.sum_ws[:, None] > 0, acc.sum_wd / acc.sum_ws[:, None], np.nan)
    lo, hi = percentile_interval(boot, confidence) if boot.shape[0] else (np.full_like(score, np.nan),) * 2
    lo = np.where(np.isfinite(score), lo, np.nan)
    hi = np.where(np.isfinite(score), hi, np.nan)
    mean_weight = acc.sum_w / acc.n if acc.n else np.zeros_like(acc.sum_w)
    return GlobalScores(score, lo, hi, relative, mean_weight, acc.n)


def local_tests(delta: np.ndarray, correction: str = "bh") -> dict[str, np.ndarray]:
    """One-sided Wilcoxon signed-rank tests (``delta > 0``) per prototype × characteristic.

    Parameters
    ----------
    delta : ndarray
        (n, P, C) local importances of n images.
    correction : str
        ``"bh"`` (Benjamini–Hochberg across all P × C tests) or ``"holm"``.

    Returns
    -------
    dict of str to ndarray
        (P, C) arrays ``n``, ``median``, ``effect_size`` (matched-pairs rank-biserial),
        ``statistic`` (W+), ``p`` and ``q`` (adjusted).
    """
    _, p_count, c_count = delta.shape
    out = {k: np.full((p_count, c_count), np.nan) for k in ("n", "median", "effect_size", "statistic", "p")}
    for p in range(p_count):
        for c in range(c_count):
            t = wilcoxon_signed_rank(delta[:, p, c], alternative="greater")
            out["n"][p, c], out["median"][p, c], out["effect_size"][p, c] = t.n, t.median, t.effect_size
            out["statistic"][p, c], out["p"][p, c] = t.statistic, t.p
    adjust = benjamini_hochberg if correction == "bh" else holm
    out["q"] = adjust(out["p"].ravel()).reshape(p_count, c_count)
    return out


def generalisation(train: np.ndarray, test: np.ndarray, characteristics: Sequence[str]) -> dict[str, Any]:
    """Do train and test global explanations agree? (the reference's Welch test, plus rank agreement).

    Parameters
    ----------
    train, test : ndarray
        (P, C) global scores of the two splits.
    characteristics : sequence of str
        The C names.

    Returns
    -------
    dict
        Per characteristic: Welch's t-test of the mean global score over prototypes (train − test;
        Holm-adjusted across characteristics), Shapiro–Wilk normality of each split's scores (as
        the reference reports) and Spearman's rho across prototypes; ``pooled``: Spearman's rho
        over all prototype × characteristic pairs.
    """
    per: dict[str, Any] = {}
    welch_p = []
    for j, name in enumerate(characteristics):
        welch = welch_t_test(train[:, j], test[:, j])
        welch_p.append(welch.p)
        per[name] = {"welch": welch.to_dict(), "spearman": spearman_correlation(train[:, j], test[:, j]).to_dict(),
                     "shapiro_train": _shapiro(train[:, j]), "shapiro_test": _shapiro(test[:, j])}
    adjusted = holm(np.asarray(welch_p, np.float64))
    for name, q in zip(characteristics, adjusted):
        per[name]["welch"]["p_holm"] = None if not np.isfinite(q) else float(q)
    return {"per_characteristic": per, "pooled": spearman_correlation(train.ravel(), test.ravel()).to_dict()}


def _shapiro(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if x.size < 3 or np.all(x == x[0]):
        return {"W": None, "p": None, "n": int(x.size)}
    res = stats.shapiro(x)
    return {"W": float(res.statistic), "p": float(res.pvalue), "n": int(x.size)}


def redundancy_groups(vectors: np.ndarray, tolerance: float) -> list[list[int]]:
    """Groups of near-identical rows: relative distance ``|a - b| / max(|a|, |b|) <= tolerance``.

    Leader clustering without chaining: in index order, the first row not yet grouped founds a
    group with every ungrouped row within ``tolerance`` of it.

    Parameters
    ----------
    vectors : ndarray
        (P, F) one vector per prototype (prototype vectors or explanation vectors); rows with a
        non-finite entry or zero norm take no part.
    tolerance : float
        Relative distance at or below which two rows are near-identical.

    Returns
    -------
    list of list of int
        Groups of at least two row indices, each sorted, in order of their first member.
    """
    v = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(v, axis=1)
    valid = np.flatnonzero(np.isfinite(v).all(axis=1) & (norms > 0))
    if valid.size < 2:
        return []
    sub = v[valid]
    sq = (sub * sub).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * sub @ sub.T, 0.0))
    close = dist <= tolerance * np.maximum(norms[valid][:, None], norms[valid][None, :])
    grouped = np.zeros(valid.size, bool)
    groups = []
    for i in range(valid.size):
        if grouped[i]:
            continue
        members = np.flatnonzero(close[i] & ~grouped)
        grouped[members] = True
        if members.size > 1:
            groups.append([int(valid[k]) for k in members])
    return groups


def verdict(score: np.ndarray, ci_low: np.ndarray, names: Sequence[str], *, dominant: float = 0.6,
            pair: float = 0.75) -> str:
    """The explanation in words: which characteristics clearly matter, by share of importance.

    A characteristic clearly matters when its global score's CI lies above 0 (its score when no CI
    is known). Among those, sorted by score: ``"mostly X"`` when X has at least ``dominant`` of
    their summed score, ``"X and Y"`` when the top two have at least ``pair``, else the top three
    (``"X, Y and Z"``); ``"no clear characteristic"`` when none clearly matters.

    Parameters
    ----------
    score, ci_low : ndarray
        (C,) global scores and CI lower bounds.
    names : sequence of str
        The C characteristic names.
    dominant, pair : float
        Share thresholds.

    Returns
    -------
    str
        E.g. ``"mostly hue"``, ``"texture and shape"``.
    """
    lower = np.where(np.isfinite(ci_low), ci_low, score)
    clear = [j for j in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
             if np.isfinite(score[j]) and score[j] > 0 and lower[j] > 0]
    if not clear:
        return "no clear characteristic"
    shares = score[clear] / score[clear].sum()
    if len(clear) == 1 or shares[0] >= dominant:
        return f"mostly {names[clear[0]]}"
    if len(clear) == 2 or shares[0] + shares[1] >= pair:
        return f"{names[clear[0]]} and {names[clear[1]]}"
    return f"{names[clear[0]]}, {names[clear[1]]} and {names[clear[2]]}"
