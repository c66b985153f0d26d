"""A uniform JSON shape for reported numbers: value, CI, n, unit and direction."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["metric"]


def _clean(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def metric(
    value: float | None,
    ci: tuple[float, float] | None = None,
    *,
    n: int | None = None,
    unit: str = "",
    higher_is_better: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A reported number that says what it means.

    Parameters
    ----------
    value : float or None
        The estimate (non-finite values become ``null``).
    ci : tuple of float, optional
        95 % confidence interval ``(low, high)``.
    n : int, optional
        Number of independent units (images) behind the estimate.
    unit : str
        E.g. ``"fraction"``, ``"logit"``, ``"AUROC"``.
    higher_is_better : bool or None
        Direction; ``None`` when neither is better.
    **extra
        More fields (p-values, method names, ...).

    Returns
    -------
    dict
        ``{"value", "ci_low", "ci_high", "n", "unit", "higher_is_better", ...}``.
    """
    lo, hi = ci if ci is not None else (None, None)
    return {"value": _clean(value), "ci_low": _clean(lo), "ci_high": _clean(hi), "n": n,
            "unit": unit, "higher_is_better": higher_is_better, **extra}
