"""From measurements to verdicts: three-valued decisions, the minimal detectable effect, exit codes.

Per check, with the p-value adjusted across the policy's checks (Holm by default)::

    FAIL          adjusted p < alpha  and  effect >= tau
    PASS          upper CI bound < tau (reliance, if any, is immaterial) and the sample was complete
    INCONCLUSIVE  otherwise: too few images, too noisy, or a sample cut short by the time budget
    ERROR         the check could not run

A sample cut short by ``time_budget_s`` can still FAIL (the evidence it has is valid) but never
PASS. The minimal detectable effect is the effect the one-sided test detects with 80 % power at
the correction's strictest level ``alpha / m``: ``(z(1 - alpha/m) + z(0.8)) * se``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from explainkit.errors import ExitCode
from explainkit.gate.kinds.base import Measurement

__all__ = ["POWER", "STATUSES", "decide", "finite_or_nan", "gate_verdict", "minimal_detectable_effect"]

#: Check statuses (lower case in JSON, upper case in text).
STATUSES = ("pass", "fail", "inconclusive", "error")
#: Power at which the minimal detectable effect is quoted.
POWER = 0.8


def minimal_detectable_effect(se: float, alpha: float, power: float = POWER) -> float | None:
    """``(z(1 - alpha) + z(power)) * se`` (None when ``se`` is unknown)."""
    if se is None or not math.isfinite(se):
        return None
    return float((stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * se)


def decide(m: Measurement, *, p_adj: float, alpha: float, tau: float, min_images: int) -> tuple[str, str]:
    """The status of one check and a one-line reason.

    Parameters
    ----------
    m : Measurement
        What the check measured.
    p_adj : float
        Its p-value after the multiplicity correction.
    alpha : float
        Significance level.
    tau : float
        Materiality threshold.
    min_images : int
        Fewer units than this is INCONCLUSIVE.

    Returns
    -------
    tuple of str
        ``(status, reason)``.
    """
    lo, hi = m.ci
    ci_text = f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) and math.isfinite(hi) else "[no CI]"
    est = f"effect {m.effect:.3g} {ci_text} {m.unit}" if math.isfinite(m.effect) else "no effect estimate"
    cut = f"; the time budget stopped it after {m.n} of {m.n_planned} images" if m.truncated else ""
    significant = math.isfinite(p_adj) and p_adj < alpha
    if significant and math.isfinite(m.effect) and m.effect >= tau and m.n >= min_images:
        return "fail", f"{est} >= tau {tau:g}, adjusted p = {p_adj:.2g} < {alpha:g}{cut}"
    if m.n < min_images:
        return "inconclusive", f"only {m.n} images (min_images {min_images}){cut}"
    if math.isfinite(hi) and hi < tau:
        if m.truncated:
            return "inconclusive", f"{est} is below tau {tau:g}, but the sample is incomplete{cut}"
        return "pass", f"{est}: upper bound below tau {tau:g}"
    why = "not significant" if not significant else f"below tau {tau:g}"
    return "inconclusive", f"{est} straddles tau {tau:g} ({why}, adjusted p = {p_adj:.2g}){cut}"


def gate_verdict(checks: Sequence[Mapping[str, Any]], *, on_inconclusive: str, today: dt.date
                 ) -> tuple[int, str, list[str]]:
    """The run's exit code, overall status and the reasons for it.

    Parameters
    ----------
    checks : sequence of dict
        Check records with ``id``, ``status``, ``severity`` and ``waiver`` (dict with ``expires``
        and ``expired``, or None).
    on_inconclusive : str
        ``warn`` or ``fail``.
    today : datetime.date
        For waiver expiry (already resolved in ``waiver["expired"]``).

    Returns
    -------
    exit_code : int
        0 pass, 1 a gating check failed (or was INCONCLUSIVE under ``on_inconclusive = "fail"``, or
        a waiver expired), 3 a gating check could not run (ERROR) and none failed.
    status : str
        ``pass``, ``fail``, ``inconclusive`` or ``error``.
    reasons : list of str
        One line per check that decided the outcome.
    """
    failing, errors, inconclusive = [], [], []
    for c in checks:
        waiver = c.get("waiver")
        if waiver and waiver.get("expired"):
            failing.append(f"{c['id']}: waiver expired on {waiver['expires']} (today {today.isoformat()})")
            continue
        if not c.get("gating"):
            continue
        if c["status"] == "fail":
            failing.append(f"{c['id']}: FAIL")
        elif c["status"] == "inconclusive":
            (failing if on_inconclusive == "fail" else inconclusive).append(f"{c['id']}: INCONCLUSIVE")
        elif c["status"] == "error":
            errors.append(f"{c['id']}: ERROR")
    if failing:
        return int(ExitCode.FINDINGS), "fail", failing
    if errors:
        return int(ExitCode.RUNTIME), "error", errors
    if inconclusive:
        return int(ExitCode.OK), "inconclusive", inconclusive
    return int(ExitCode.OK), "pass", []


def finite_or_nan(values: Sequence[float | None]) -> np.ndarray:
    """Floats with None → NaN (for the multiplicity correction)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
