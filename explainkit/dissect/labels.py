"""Unit labels from a :class:`~explainkit.dissect.tally.Tally`, with a confidence interval and a test.

The label of a unit is the concept of largest IoU, kept when that IoU exceeds 0.04 (the
reference's ``SCORE_THRESHOLD``). The reference gives no uncertainty; users ask whether 0.04 can
be reached by chance. Here each label also gets:

* a delta-method confidence interval of its IoU over images (the independent unit);
* a one-sided z-test of ``IoU > iou_threshold``, Bonferroni-corrected for choosing the best of C
  concepts (valid for the selected label), then Benjamini–Hochberg over the layer's units;
* ``confirmed``: q < alpha.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from explainkit.dissect.tally import Tally
from explainkit.errors import ConfigError
from explainkit.report.jsonify import jsonable
from explainkit.stats import benjamini_hochberg

__all__ = ["UnitLabel", "label_units", "validate_labelling"]


@dataclass
class UnitLabel:
    """A unit's Network Dissection result.

    Attributes
    ----------
    unit : int
        Unit (channel) index.
    name : str
        Unit name.
    threshold : float
        Activation threshold ``T_u`` (the unit's top-quantile value).
    best : str or None
        Concept of largest IoU (``None`` when the unit overlaps no concept).
    label : str or None
        ``best`` when its IoU exceeds the IoU threshold (the reference's label), else ``None``.
    iou : float
        IoU of ``best`` over the probe set.
    ci_low, ci_high : float
        Delta-method confidence interval of that IoU.
    p : float
        One-sided p of ``IoU > iou_threshold`` (normal approximation), before corrections.
    p_selection : float
        ``min(1, C·p)``: corrected for picking the best of C concepts.
    q : float
        Benjamini–Hochberg q over the layer's units.
    confirmed : bool
        ``q < alpha``.
    unit_pixels : int
        Pixels of the unit's binarised masks over the probe set.
    runners_up : list of list
        The next concepts by IoU, ``[[concept, iou], ...]``.
    """

    unit: int
    name: str
    threshold: float
    best: str | None
    label: str | None
    iou: float
    ci_low: float
    ci_high: float
    p: float
    p_selection: float
    q: float = float("nan")
    confirmed: bool = False
    unit_pixels: int = 0
    runners_up: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become ``None``)."""
        return jsonable(self.__dict__)


def validate_labelling(quantile: float, iou_threshold: float, alpha: float, confidence: float) -> None:
    """Raise :class:`ConfigError` for out-of-range labelling parameters."""
    if not 0.0 < quantile < 0.5:
        raise ConfigError(f"quantile must be in (0, 0.5), not {quantile!r}")
    if not 0.0 <= iou_threshold < 1.0:
        raise ConfigError(f"iou_threshold must be in [0, 1), not {iou_threshold!r}")
    if not 0.0 < alpha < 1.0 or not 0.5 < confidence < 1.0:
        raise ConfigError("alpha must be in (0, 1) and confidence in (0.5, 1)")


def label_units(tally: Tally, concept_names: Sequence[str], *, iou_threshold: float = 0.04, alpha: float = 0.05,
                confidence: float = 0.95, unit_names: Sequence[str] | None = None,
                runners_up: int = 3) -> list[UnitLabel]:
    """Label every unit of a tallied layer.

    Parameters
    ----------
    tally : Tally
        Counts of one layer.
    concept_names : sequence of str
        C names, in the tally's column order.
    iou_threshold : float
        Smallest IoU that makes a label (0.04 in the reference).
    alpha : float
        False discovery rate over the units.
    confidence : float
        Level of the IoU intervals.
    unit_names : sequence of str, optional
        D names (default: the indices).
    runners_up : int
        How many next-best concepts to list.

    Returns
    -------
    list of UnitLabel
        One per unit, in unit order.
    """
    names = list(concept_names)
    iou = tally.iou()
    d, c = iou.shape
    if len(names) != c:
        raise ConfigError(f"{len(names)} concept names for {c} tallied concepts")
    unit_names = [str(u) for u in range(d)] if unit_names is None else [str(x) for x in unit_names]
    best = np.argmax(iou, axis=1)
    value, se = tally.iou_se(np.arange(d), best)
    z = stats.norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(se > 0, stats.norm.sf((value - iou_threshold) / se), np.where(value > iou_threshold, 0.0, 1.0))
    p = np.where(np.isfinite(value), p, np.nan)
    p_sel = np.minimum(1.0, p * c)
    q = benjamini_hochberg(p_sel)
    pixels = tally.unit_pixels()
    order = np.argsort(-iou, axis=1, kind="stable")
    out = []
    for u in range(d):
        has = bool(iou[u, best[u]] > 0)
        out.append(UnitLabel(
            unit=u, name=unit_names[u], threshold=float(tally.thresholds[u]),
            best=names[best[u]] if has else None,
            label=names[best[u]] if has and iou[u, best[u]] > iou_threshold else None,
            iou=float(iou[u, best[u]]), ci_low=float(max(0.0, value[u] - z * se[u])),
            ci_high=float(min(1.0, value[u] + z * se[u])), p=float(p[u]), p_selection=float(p_sel[u]),
            q=float(q[u]), confirmed=bool(q[u] < alpha), unit_pixels=int(pixels[u]),
            runners_up=[[names[j], float(iou[u, j])] for j in order[u, 1 : 1 + runners_up] if iou[u, j] > 0],
        ))
    return out
