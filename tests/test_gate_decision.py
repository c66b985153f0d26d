"""Decisions: three-valued outcomes, the minimal detectable effect, exit codes and waivers."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from scipy import stats

from explainkit.errors import ExitCode
from explainkit.gate.decision import decide, gate_verdict, minimal_detectable_effect
from explainkit.gate.kinds.base import Measurement

TODAY = dt.date(2026, 6, 1)


def _m(effect, lo, hi, p, n=50, truncated=False, n_planned=None):
    return Measurement(effect=effect, ci=(lo, hi), p=p, n=n, n_planned=n_planned or n, se=0.1, unit="logit",
                       truncated=truncated)


@pytest.mark.parametrize(("m", "p_adj", "status"), [
    (_m(2.0, 1.5, 2.5, 1e-6), 1e-5, "fail"),            # significant and material
    (_m(0.2, 0.1, 0.3, 1e-6), 1e-5, "pass"),            # significant but immaterial: CI below tau
    (_m(0.9, 0.5, 1.3, 1e-3), 1e-2, "inconclusive"),    # below tau but the CI straddles it
    (_m(1.5, -0.5, 3.5, 0.2), 0.4, "inconclusive"),     # material but not significant
    (_m(2.0, 1.5, 2.5, 1e-6), 0.06, "inconclusive"),    # significant only before the correction
    (_m(0.0, 0.0, 0.0, 1.0), 1.0, "pass"),              # no effect at all
    (_m(2.0, 1.5, 2.5, 1e-6, n=5), 1e-5, "inconclusive"),  # too few images
    (_m(0.2, 0.1, 0.3, 1e-6, truncated=True, n_planned=80), 1e-5, "inconclusive"),  # budget cut: never PASS
    (_m(2.0, 1.5, 2.5, 1e-6, truncated=True, n_planned=80), 1e-5, "fail"),  # ...but the evidence may FAIL
    (_m(float("nan"), float("nan"), float("nan"), float("nan"), n=0), float("nan"), "inconclusive"),
])
def test_decide(m, p_adj, status):
    got, reason = decide(m, p_adj=p_adj, alpha=0.05, tau=1.0, min_images=10)
    assert got == status, reason
    assert "\n" not in reason
    if m.truncated:
        assert f"after {m.n} of {m.n_planned} images" in reason


def test_minimal_detectable_effect_matches_the_sample_size_formula():
    # n ≈ (z_{1-a} + z_{power})² (sigma / tau)² / ARE pairs detect tau with that power (one-sided)
    sigma, tau, alpha = 2.0, 0.5, 0.05
    n = (stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) ** 2 * (sigma / tau) ** 2 / (3 / math.pi)
    se = sigma / math.sqrt(n * 3 / math.pi)
    assert minimal_detectable_effect(se, alpha) == pytest.approx(tau)
    assert (stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) ** 2 == pytest.approx(6.18, abs=0.01)
    assert minimal_detectable_effect(float("nan"), alpha) is None
    assert minimal_detectable_effect(se, alpha / 4) > tau


def _c(ident, status, gating=True, waiver=None):
    return {"id": ident, "status": status, "gating": gating, "waiver": waiver, "severity": "error"}


@pytest.mark.parametrize(("checks", "on_inc", "code", "status"), [
    ([_c("a", "pass"), _c("b", "pass")], "warn", 0, "pass"),
    ([_c("a", "pass"), _c("b", "fail")], "warn", 1, "fail"),
    ([_c("a", "fail", gating=False)], "warn", 0, "pass"),            # warnings never gate
    ([_c("a", "inconclusive")], "warn", 0, "inconclusive"),
    ([_c("a", "inconclusive")], "fail", 1, "fail"),
    ([_c("a", "inconclusive", gating=False)], "fail", 0, "pass"),
    ([_c("a", "error")], "warn", 3, "error"),
    ([_c("a", "error"), _c("b", "fail")], "warn", 1, "fail"),         # a failure decides over an error
    ([_c("a", "fail", gating=False, waiver={"expires": "2027-01-31", "expired": False})], "warn", 0, "pass"),
    ([_c("a", "pass", gating=True, waiver={"expires": "2026-01-31", "expired": True})], "warn", 1, "fail"),
])
def test_gate_verdict(checks, on_inc, code, status):
    got_code, got_status, reasons = gate_verdict(checks, on_inconclusive=on_inc, today=TODAY)
    assert (got_code, got_status) == (code, status)
    assert got_code in {int(e) for e in ExitCode}
    if code:
        assert reasons and all(isinstance(r, str) for r in reasons)
    if any(c["waiver"] and c["waiver"]["expired"] for c in checks):
        assert "waiver expired on 2026-01-31" in reasons[0]
