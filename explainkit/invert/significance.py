"""Honest significance for neuron labels: search on one split, confirm on another.

The reference computes a two-sided Mann–Whitney p-value on the very samples the search used to
pick the best of ~10**4 formulas, which is optimistic (the winner's curse) and underflows to 0 for
strong labels. explainkit instead

1. splits the probe set by image, seeded and stratified (on concept patterns by default), into a
   search split and a held-out confirm split;
2. re-evaluates each formula found on the search split on the confirm split: AUROC with a DeLong
   95 % CI and a one-sided Mann–Whitney U p-value in the direction of the mode (``greater`` for
   positive labels, ``less`` for negative ones), also as log10 p;
3. corrects the best label's p-values for all neurons of a layer with Benjamini–Hochberg;
4. accepts a label when ``q < alpha`` and the CI clears an AUROC floor (lower bound ≥ floor for
   positive labels, upper bound ≤ 1 − floor for negative ones).

The reference's two-sided same-data p-value is reported next to it for comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from explainkit.errors import ConfigError, DataError
from explainkit.report.jsonify import jsonable
from explainkit.stats import RankedScores, benjamini_hochberg, mann_whitney_log10_p, mann_whitney_z

__all__ = [
    "Confirmation",
    "SameDataTest",
    "accept",
    "bh_q_values",
    "confirm",
    "same_data_test",
    "stratified_split",
    "validate_decision",
]


def validate_decision(alpha: float, auroc_floor: float, confidence: float, confirm_fraction: float) -> None:
    """Raise :class:`ConfigError` for out-of-range decision parameters."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), not {alpha}")
    if not 0.5 <= auroc_floor <= 1.0:
        raise ConfigError(f"auroc_floor must be in [0.5, 1], not {auroc_floor}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), not {confidence}")
    if not 0.0 <= confirm_fraction < 1.0:
        raise ConfigError(f"confirm_fraction must be in [0, 1), not {confirm_fraction}")


def stratified_split(strata: np.ndarray, confirm_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split samples into search and confirm indices, stratified and seeded.

    Samples are grouped by stratum (random order inside each), then every ``1/confirm_fraction``-th
    one along that order (with a random phase) goes to the confirm split: each stratum is split in
    the requested proportion up to one sample, and tiny strata are spread evenly.

    Parameters
    ----------
    strata : ndarray
        (N,) integer stratum per sample (e.g. concept-row pattern or class).
    confirm_fraction : float
        Share of samples held out, in (0, 1).
    seed : int
        Seed of the split.

    Returns
    -------
    search, confirm : ndarray
        Sorted int64 indices.

    Raises
    ------
    DataError
        When either split would be empty.
    """
    strata = np.asarray(strata)
    n = strata.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(strata[perm], kind="stable")]
    phase = rng.random()
    i = np.arange(n, dtype=np.float64)
    held = np.floor((i + 1) * confirm_fraction + phase) > np.floor(i * confirm_fraction + phase)
    confirm_idx = np.sort(order[held])
    search_idx = np.sort(order[~held])
    if confirm_idx.size < 2 or search_idx.size < 2:
        raise DataError(
            f"{n} samples are too few to hold out {confirm_fraction:.0%} for confirmation; "
            "use more probe images or confirm_fraction=0 (no held-out split)"
        )
    return search_idx, confirm_idx


@dataclass(frozen=True)
class SameDataTest:
    """The reference's test: two-sided Mann–Whitney U on the data the search used (optimistic).

    Attributes
    ----------
    p : float
        Two-sided p-value (underflows to 0.0 for strong labels).
    log10_p : float
        log10 p (does not underflow).
    z : float
        Standardised U (tie and continuity corrected).
    """

    p: float
    log10_p: float
    z: float


def same_data_test(rank_sum: float, n: int, n_total: int, ties: float) -> SameDataTest:
    """Two-sided Mann–Whitney test from a formula's rank sum and count on the search data."""
    u = rank_sum - n * (n + 1) / 2.0
    z = float(mann_whitney_z(u, n, n_total - n, ties, "two-sided"))
    log10_p = float(mann_whitney_log10_p(z, "two-sided"))
    return SameDataTest(float(10.0**log10_p), log10_p, z)


@dataclass(frozen=True)
class Confirmation:
    """A formula re-evaluated on the held-out confirm split.

    Attributes
    ----------
    auroc : float
        Exact AUROC on the confirm split (NaN when the formula is all-true or all-false there).
    ci_low, ci_high : float
        DeLong confidence interval (clipped to [0, 1]).
    se : float
        DeLong standard error.
    confidence : float
        Level of the interval.
    n, n_positive : int
        Confirm-split size and the number of its samples satisfying the formula.
    fraction : float
        ``n_positive / n``.
    p : float
        One-sided Mann–Whitney p-value (``greater`` for positive labels, ``less`` for negative).
    log10_p : float
        log10 of ``p``.
    z : float
        Standardised U for that alternative.
    alternative : str
        ``"greater"`` or ``"less"``.
    """

    auroc: float
    ci_low: float
    ci_high: float
    se: float
    confidence: float
    n: int
    n_positive: int
    fraction: float
    p: float
    log10_p: float
    z: float
    alternative: str

    def to_dict(self) -> dict:
        """JSON-ready fields (non-finite numbers become ``None``)."""
        return jsonable(asdict(self))


def confirm(scores: RankedScores, mask: np.ndarray, mode: str, confidence: float = 0.95) -> Confirmation:
    """Held-out AUROC, DeLong CI and one-sided Mann–Whitney test of one formula.

    Parameters
    ----------
    scores : RankedScores
        The neuron's activations on the confirm split.
    mask : ndarray
        (n,) bool, samples of the confirm split satisfying the formula.
    mode : str
        ``"positive"`` tests "higher on the formula", ``"negative"`` "lower".
    confidence : float
        CI level.

    Returns
    -------
    Confirmation
        The held-out statistics.
    """
    alternative = "greater" if mode == "positive" else "less"
    dl = scores.delong(mask, confidence)
    mw = scores.mann_whitney(mask, alternative)
    n = scores.n
    return Confirmation(dl.auroc, dl.ci_low, dl.ci_high, dl.se, confidence, n, dl.n1, dl.n1 / n if n else float("nan"),
                        mw.p, mw.log10_p, mw.z, alternative)


def bh_q_values(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values over a layer's neurons; an untestable label (NaN p) counts as p = 1."""
    p = np.asarray(p_values, dtype=np.float64)
    return benjamini_hochberg(np.where(np.isfinite(p), p, 1.0))


def accept(q: float, conf: Confirmation, mode: str, alpha: float, auroc_floor: float) -> bool:
    """``q < alpha`` and the confirm-split CI clears the AUROC floor in the mode's direction."""
    if not (np.isfinite(q) and np.isfinite(conf.ci_low) and np.isfinite(conf.ci_high)):
        return False
    clears = conf.ci_low >= auroc_floor if mode == "positive" else conf.ci_high <= 1.0 - auroc_floor
    return bool(q < alpha and clears)
