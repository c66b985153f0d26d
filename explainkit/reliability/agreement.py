"""Network Dissection next to INVERT: the two labels of each unit and whether they agree.

Network Dissection asks where a unit fires (pixel masks, IoU); INVERT asks which images make it
fire most (image-level labels, AUROC of a pooled activation). They can disagree for good reasons
(a unit firing on the background of circle images is ``circle`` for INVERT and ``background`` for
Network Dissection), so the report shows both with their evidence and this comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from explainkit.stats import wilson_interval

__all__ = ["AGREEMENT", "agreement", "compare_labels"]

#: Outcomes of comparing a unit's two labels.
AGREEMENT = ("agree", "differ", "dissect_only", "invert_only", "neither")


def agreement(dissect: str | None, invert: str | None, invert_concepts: Sequence[str]) -> str:
    """How a unit's (confirmed) Network Dissection label relates to its (accepted) INVERT label.

    Parameters
    ----------
    dissect : str or None
        The Network Dissection label.
    invert : str or None
        The INVERT formula.
    invert_concepts : sequence of str
        The concepts the INVERT formula uses positively.

    Returns
    -------
    str
        ``agree`` when the Network Dissection label is a positive concept of the INVERT formula,
        ``differ`` when both exist otherwise; ``dissect_only`` / ``invert_only`` / ``neither``.
    """
    if dissect is not None and invert is not None:
        return "agree" if dissect in invert_concepts else "differ"
    if dissect is not None:
        return "dissect_only"
    return "invert_only" if invert is not None else "neither"


def compare_labels(dissect: Sequence[str | None], invert: Sequence[str | None],
                   invert_concepts: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Agreement of the two methods over a layer's units.

    Parameters
    ----------
    dissect, invert : sequence of str or None
        One label per unit (``None``: no confirmed / accepted label).
    invert_concepts : sequence of sequence of str
        Per unit, the concepts its INVERT formula uses positively.

    Returns
    -------
    dict
        ``outcomes`` (one of :data:`AGREEMENT` per unit), ``counts`` per outcome and ``agreement``:
        the share of units labelled by both on which they agree, with a Wilson 95 % CI.
    """
    outcomes = [agreement(a, b, c) for a, b, c in zip(dissect, invert, invert_concepts)]
    counts = {k: outcomes.count(k) for k in AGREEMENT}
    both = counts["agree"] + counts["differ"]
    lo, hi = wilson_interval(counts["agree"], both) if both else (None, None)
    return {"outcomes": outcomes, "counts": counts,
            "agreement": {"value": counts["agree"] / both if both else None, "ci_low": lo, "ci_high": hi,
                          "n": both, "unit": "share of units labelled by both methods whose labels agree",
                          "higher_is_better": None, "ci_method": "Wilson"}}
