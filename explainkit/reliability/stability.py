"""How much a unit's label depends on the probe set: bootstrap resamples and a second probe set.

Ramaswamy et al. (CVPR 2023, "Overlooked factors in concept-based explanations") show that
concept labels change with the probe dataset. Two measurements here:

* **bootstrap stability**: the probe set is resampled with replacement B times and every unit is
  labelled again (INVERT on the resampled activations and concept table; Network Dissection with the
  resampled images' counts at the full-probe thresholds); stability = the share of resamples that
  give the unit its full-probe label, with a Wilson interval for the Monte-Carlo error;
* **two probe sets**: the labels from a second probe set, compared unit by unit.

Both methods' labels are strings (INVERT's formula, Network Dissection's concept) or ``None``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from explainkit.dissect.tally import Tally
from explainkit.invert.api import label_neurons
from explainkit.invert.concepts import ConceptMatrix
from explainkit.stats import wilson_interval

__all__ = ["bootstrap_indices", "dissect_bootstrap_labels", "invert_bootstrap_labels", "label_stability",
           "probe_agreement"]


def bootstrap_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) row indices of B bootstrap resamples of n images."""
    return rng.integers(0, n, size=(resamples, n))


def invert_bootstrap_labels(acts: np.ndarray, table: np.ndarray, names: Sequence[str], resamples: np.ndarray, *,
                            length: int = 1, max_fraction: float = 0.5) -> list[list[str | None]]:
    """INVERT's best formula of every unit on each resample (searched on the whole resample, as the reference).

    Parameters
    ----------
    acts : ndarray
        (n, D) pooled activations.
    table : ndarray
        (n, C) bool concept table.
    names : sequence of str
        C concept names.
    resamples : ndarray
        (B, n) row indices.
    length, max_fraction
        INVERT's search parameters.

    Returns
    -------
    list of list
        (B, D) formulas (``None`` where no formula satisfies the fraction limits).
    """
    out = []
    for rows in resamples:
        res = label_neurons(acts[rows], ConceptMatrix(table[rows], names), length=length, beam=max(3, length),
                            max_fraction=max_fraction, confirm_fraction=0.0)
        out.append([r.best.formula if r.best is not None else None for r in res])
    return out


def dissect_bootstrap_labels(counts: Tally, names: Sequence[str], resamples: np.ndarray, *,
                             iou_threshold: float = 0.04) -> list[list[str | None]]:
    """Network Dissection labels of every unit on each resample (image weights, thresholds held fixed).

    Parameters
    ----------
    counts : Tally
        The layer's tally (rows of ``counts.images`` are the resampled rows).
    names : sequence of str
        Concept names in tally column order.
    resamples : ndarray
        (B, n) row indices.
    iou_threshold : float
        Smallest IoU that makes a label.

    Returns
    -------
    list of list
        (B, D) labels.
    """
    out = []
    for rows in resamples:
        iou = counts.iou(np.bincount(rows, minlength=counts.images.size))
        best = iou.argmax(1)
        out.append([names[b] if iou[u, b] > iou_threshold else None for u, b in enumerate(best)])
    return out


def label_stability(full: Sequence[str | None], boot: Sequence[Sequence[str | None]], alternatives: int = 3
                    ) -> list[dict[str, Any]]:
    """Per unit: the share of resamples reproducing the full-probe label, its Wilson CI, and the runners-up.

    Parameters
    ----------
    full : sequence of str or None
        D full-probe labels.
    boot : sequence of sequence
        (B, D) resample labels.
    alternatives : int
        Most frequent other labels listed.

    Returns
    -------
    list of dict
        ``value``, ``ci_low``, ``ci_high``, ``n`` (resamples), ``alternatives`` ([[label, share], ...]).
    """
    b = len(boot)
    out = []
    for u, label in enumerate(full):
        seen = Counter(row[u] for row in boot)
        same = seen.get(label, 0)
        lo, hi = wilson_interval(same, b) if b else (float("nan"), float("nan"))
        others = [[lab, cnt / b] for lab, cnt in seen.most_common() if lab != label][:alternatives]
        out.append({"value": same / b if b else None, "ci_low": lo, "ci_high": hi, "n": b, "alternatives": others})
    return out


def probe_agreement(first: Sequence[str | None], second: Sequence[str | None]) -> dict[str, Any]:
    """How often two probe sets give a unit the same label (units labelled on both), with a Wilson CI."""
    both = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    same = sum(a == b for a, b in both)
    lo, hi = wilson_interval(same, len(both)) if both else (None, None)
    return {"value": same / len(both) if both else None, "ci_low": lo, "ci_high": hi, "n": len(both),
            "unit": "share of units labelled on both probe sets whose labels agree", "higher_is_better": True,
            "ci_method": "Wilson", "only_first": sum(a is not None and b is None for a, b in zip(first, second)),
            "only_second": sum(a is None and b is not None for a, b in zip(first, second))}
