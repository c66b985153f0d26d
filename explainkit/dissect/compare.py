"""Network Dissection next to INVERT: the two labels of each unit and whether they agree.

Network Dissection asks where a unit fires (pixel masks, IoU); INVERT asks which images make it
fire most (image-level labels, AUROC of a pooled activation). They can disagree for good reasons
(a unit firing on the background of circle images is ``circle`` for INVERT and ``background`` for
Network Dissection), so the report shows both with their evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from explainkit.dissect.labels import UnitLabel
from explainkit.invert.api import NeuronResult
from explainkit.stats import wilson_interval

__all__ = ["AGREEMENT", "agreement", "compare_labels"]

#: Outcomes of comparing a unit's two labels.
AGREEMENT = ("agree", "differ", "dissect_only", "invert_only", "neither")


def agreement(nd: UnitLabel, inv: NeuronResult | None) -> str:
    """How a unit's Network Dissection label relates to its INVERT label.

    ``agree`` when the confirmed Network Dissection label is a positive literal of INVERT's accepted
    best formula; ``differ`` when both exist otherwise; ``dissect_only`` / ``invert_only`` / ``neither``
    when one or both methods gave no confirmed label.
    """
    has_nd = nd.label is not None and nd.confirmed
    best = inv.best if inv is not None else None
    has_inv = best is not None and bool(inv.accepted)
    if has_nd and has_inv:
        positive = {name for _, name, negated in best.terms if not negated}
        return "agree" if nd.label in positive else "differ"
    if has_nd:
        return "dissect_only"
    return "invert_only" if has_inv else "neither"


def compare_labels(nd: Sequence[UnitLabel], inv: Sequence[NeuronResult]) -> dict[str, Any]:
    """Agreement of the two methods over a layer's units.

    Parameters
    ----------
    nd : sequence of UnitLabel
        Network Dissection labels, one per unit.
    inv : sequence of NeuronResult
        INVERT results for the same units (same order).

    Returns
    -------
    dict
        ``outcomes`` (one of :data:`AGREEMENT` per unit), ``counts`` per outcome and ``agreement``:
        the share of units labelled by both on which they agree, with a Wilson 95 % CI.
    """
    outcomes = [agreement(a, b) for a, b in zip(nd, inv)]
    counts = {k: outcomes.count(k) for k in AGREEMENT}
    both = counts["agree"] + counts["differ"]
    lo, hi = wilson_interval(counts["agree"], both) if both else (None, None)
    return {"outcomes": outcomes, "counts": counts,
            "agreement": {"value": counts["agree"] / both if both else None, "ci_low": lo, "ci_high": hi,
                          "n": both, "unit": "share of units labelled by both methods whose labels agree",
                          "higher_is_better": None, "ci_method": "Wilson"}}
