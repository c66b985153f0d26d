"""From slices to ranked candidates: screen on the discovery split, test on the confirmation split.

The outcome of every image is the model's probability of a target class ``t``. A slice *pulls
toward t* when its members get more of ``t``'s probability than images of the same class that
are not members: the effect is :func:`explainkit.stats.stratified_difference` with the true class
as the stratum (members' weights), in probability units.

1. **Screen** (discovery split): for each slice, the target ``t`` with the largest test statistic
   of ``effect > tau``; slices whose discovery effect does not exceed ``tau`` are dropped, the
   others are ranked by that statistic and the best ``max_candidates`` go on. A slice of one
   class (a cluster, an attribution slice) may only pull toward *another* class: "more confident
   in its own class than its class-mates" is the mirror image of a problem among the class-mates,
   which their own slice shows directly.
2. **Confirm** (confirmation split, never used for any choice): the same effect for the chosen
   ``t``, its CI, and the one-sided p-value of ``H0: effect <= tau`` (a minimum-effect test: a
   candidate is significant only when its pull is *material*, not merely non-zero).
3. **Correct** the confirmation p-values over all confirmed candidates of every source (Holm by
   default: it controls the family-wise error rate under any dependence between candidates, which
   overlap heavily; ``bh``/``by`` are available).

Sample splitting makes the confirmation test valid whatever the screening did (clustering,
target choice, INVERT's search): given the split, the confirmation images are independent of
every choice, so the p-values of the confirmed candidates are exact up to the t approximation and
the correction controls the error over exactly the hypotheses tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explainkit.discovery.slices import Slice
from explainkit.stats import StratifiedDifference, adjust_pvalues, stratified_difference

__all__ = ["NAMED_SOURCES", "RELATED_SHARE", "SOURCE_ORDER", "Candidate", "confirm", "rank", "screen",
           "simultaneous_ci"]


@dataclass
class Candidate:
    """A slice with its target class and the statistics of both splits.

    Attributes
    ----------
    slice : Slice
        The images.
    target : int
        Target class index.
    target_name : str
        Its name.
    screen : dict
        Discovery-split statistics of the chosen target (:meth:`StratifiedDifference.column`).
    test : StratifiedDifference or None
        Confirmation-split statistics (one column) after :func:`confirm`.
    error_gap, target_rate_gap : StratifiedDifference or None
        Confirmation-split differences of the error indicator and of the "predicted as target"
        indicator (members minus their class-mates; CIs only, no test).
    p_adj : float
        Adjusted p-value.
    significant : bool
        ``p_adj < alpha``.
    related : list of dict
        Candidates describing the same cue (filled by :func:`rank`).
    group : int
        1-based cue group (filled by :func:`rank`).
    group_lead : bool
        Whether it leads its group.
    """

    slice: Slice
    target: int
    target_name: str
    screen: dict[str, Any]
    test: StratifiedDifference | None = None
    error_gap: StratifiedDifference | None = None
    target_rate_gap: StratifiedDifference | None = None
    p_adj: float = float("nan")
    significant: bool = False
    related: list[dict[str, Any]] = field(default_factory=list)
    group: int = 0
    group_lead: bool = True

    @property
    def key(self) -> str:
        """Stable id: the slice's key and the target."""
        return f"{self.slice.key}>{self.target_name}"


def screen(slices: Sequence[Slice], probs: np.ndarray, labels: np.ndarray, discovery: np.ndarray,
           class_names: Sequence[str], *, tau: float, min_group: int, max_candidates: int,
           confidence: float = 0.95) -> list[Candidate]:
    """Choose each slice's target on the discovery split and keep the most promising slices.

    Parameters
    ----------
    slices : sequence of Slice
        Candidate slices.
    probs : ndarray
        (N, K) predicted probabilities.
    labels : ndarray
        (N,) class index (the strata).
    discovery : ndarray
        (N,) bool: the discovery split.
    class_names : sequence of str
        K class names.
    tau : float
        Materiality margin (probability).
    min_group : int
        Smallest group per stratum.
    max_candidates : int
        How many slices go on to confirmation.
    confidence : float
        CI level of the recorded discovery statistics.

    Returns
    -------
    list of Candidate
        At most ``max_candidates``, best discovery statistic first; only slices whose discovery
        effect exceeds ``tau``.
    """
    kept: list[tuple[float, int, Candidate]] = []
    for i, s in enumerate(slices):
        rows = discovery & s.eligible
        sd = stratified_difference(probs[rows], s.member[rows], labels[rows], margin=tau, confidence=confidence,
                                   min_group=min_group)
        if not sd.defined:
            continue
        score = np.where(np.isfinite(sd.t), sd.t, np.where(sd.t > 0, np.inf, -np.inf))
        if sd.strata.size == 1 and sd.strata[0] < score.size:
            score[sd.strata[0]] = -np.inf  # a one-class slice must pull toward another class
        t = int(np.argmax(score))
        if not np.isfinite(score[t]) and score[t] < 0:
            continue
        if not sd.effect[t] > tau:
            continue
        kept.append((float(score[t]), i, Candidate(s, t, class_names[t], sd.column(t))))
    kept.sort(key=lambda item: (-item[0], item[1]))
    return [c for _, _, c in kept[:max_candidates]]


def confirm(candidates: Sequence[Candidate], probs: np.ndarray, labels: np.ndarray, confirmation: np.ndarray, *,
            tau: float, min_group: int, alpha: float, correction: str, confidence: float = 0.95) -> list[Candidate]:
    """Test each candidate on the confirmation split and correct over all of them.

    Parameters
    ----------
    candidates : sequence of Candidate
        From :func:`screen`.
    probs : ndarray
        (N, K) predicted probabilities.
    labels : ndarray
        (N,) class index.
    confirmation : ndarray
        (N,) bool: the confirmation split.
    tau : float
        Margin of the one-sided test.
    min_group : int
        Smallest group per stratum.
    alpha : float
        Significance level after the correction.
    correction : str
        ``holm``, ``bh``, ``by`` or ``none``.
    confidence : float
        CI level.

    Returns
    -------
    list of Candidate
        The candidates that could be tested (at least one stratum with ``min_group`` members and
        reference images on the confirmation split), with ``test``, the two gaps, ``p_adj`` and
        ``significant`` set.
    """
    pred = probs.argmax(1)
    error = (pred != labels).astype(np.float64)
    tested = []
    for c in candidates:
        rows = confirmation & c.slice.eligible
        member, strata = c.slice.member[rows], labels[rows]
        c.test = stratified_difference(probs[rows, c.target], member, strata, margin=tau, confidence=confidence,
                                       min_group=min_group)
        if not c.test.defined:
            continue
        c.error_gap = stratified_difference(error[rows], member, strata, confidence=confidence, min_group=min_group)
        c.target_rate_gap = stratified_difference((pred[rows] == c.target).astype(np.float64), member, strata,
                                                  confidence=confidence, min_group=min_group)
        tested.append(c)
    p_adj = adjust_pvalues(np.array([c.test.p[0] for c in tested]), correction)
    for c, p in zip(tested, p_adj):
        c.p_adj = float(p)
        c.significant = bool(p < alpha)
    return tested


def simultaneous_ci(c: Candidate, m: int, alpha_ci: float = 0.05) -> tuple[float, float]:
    """Bonferroni-simultaneous ``1 - alpha_ci`` interval of a confirmed candidate's effect over ``m`` candidates."""
    from scipy import stats

    t = c.test
    assert t is not None
    q = stats.t.ppf(1 - alpha_ci / (2 * max(1, m)), t.df[0])
    return float(t.effect[0] - q * t.se[0]), float(t.effect[0] + q * t.se[0])


#: Sources in the order a duplicate keeps them: named cues first, then image-derived ones.
SOURCE_ORDER = ("concept", "invert", "attribution", "cluster")
#: Sources that name their cue (a concept column, an INVERT label); they lead their group.
NAMED_SOURCES = ("concept", "invert")
#: Share that makes two candidates the same cue (see :func:`rank`).
RELATED_SHARE = 0.8


def _statistic(c: Candidate) -> float:
    assert c.test is not None
    t = float(c.test.t[0])
    return t if np.isfinite(t) else (np.inf if t > 0 else -np.inf)


def _relation(a: Candidate, b: Candidate) -> tuple[str, float] | None:
    """How ``a`` relates to ``b``, or ``None``.

    ``"inside"``: at least 80 % of a's members are b's, same target. ``"complement"`` (for a slice
    compared within part of the images, e.g. one class): at least 80 % of a's members are without
    b's cue and at least half of a's reference images carry it.
    """
    ma, mb = a.slice.member, b.slice.member
    n_a = max(1, int(ma.sum()))
    inside = int((ma & mb).sum()) / n_a
    if a.target == b.target and inside >= RELATED_SHARE:
        return "inside", inside
    ref = a.slice.eligible & ~ma
    if ref.any() and not a.slice.eligible.all() and 1.0 - inside >= RELATED_SHARE:
        ref_in = int((ref & mb).sum()) / int(ref.sum())
        if ref_in >= 0.5:
            return "complement", ref_in
    return None


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Order candidates best first, grouping those that describe one cue.

    Two candidates are the same cue when one's members lie mostly (>= 80 %) inside the other's
    with the same target (a cluster of stamped squares inside the ``stamp`` concept), or when one
    is mostly the other's complement within its class (unstamped circles, at least half of whose
    reference images are stamped). Groups are the connected sets of these relations. Each group is led by its best
    named candidate (concept, then INVERT unit, then attribution, then cluster; ties by the
    statistic); groups are ordered significant first, then by their best confirmation statistic;
    inside a group the lead comes first, the others by their statistic. ``related`` records every
    relation with its share.
    """
    n = len(candidates)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(candidates):
        for j, b in enumerate(candidates):
            if i == j:
                continue
            rel = _relation(a, b)
            if rel is not None:
                a.related.append({"candidate": b.key, "relation": rel[0], "share": rel[1]})
                parent[find(i)] = find(j)
    groups: dict[int, list[Candidate]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(find(i), []).append(c)

    def strength(c: Candidate) -> tuple:
        return (not c.significant, -_statistic(c), -float(c.test.effect[0]) if c.test else 0.0, c.key)

    ordered_groups = []
    for members in groups.values():
        lead = min(members, key=lambda c: (not c.significant, c.slice.source not in NAMED_SOURCES,
                                           c.slice.source != "concept", *strength(c)[1:]))
        rest = sorted((c for c in members if c is not lead), key=strength)
        ordered_groups.append((min(strength(c) for c in members), [lead, *rest]))
    ordered_groups.sort(key=lambda g: g[0])
    out = []
    for g, (_, members) in enumerate(ordered_groups, start=1):
        for k, c in enumerate(members):
            c.group, c.group_lead = g, k == 0
            out.append(c)
    return out
