"""The one-screen text summary of a check report (stdout).

Every value from the policy, the data or the model is escaped (:func:`explainkit.textsafe.escape`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from explainkit.textsafe import escape

__all__ = ["format_summary"]

_ID_WIDTH = 28


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return escape(value)


def _effect(e: Mapping[str, Any]) -> str:
    if e["value"] is None:
        return "–"
    text = f"{e['value']:+.3g}"
    if e["ci_low"] is not None:
        text += f" [{e['ci_low']:.3g}, {e['ci_high']:.3g}]"
    return f"{text} {escape(e['unit'])}".strip()


def format_summary(report: Mapping[str, Any], paths: Mapping[str, Path] | None = None) -> str:
    """Status, one line per check, the decision and where the files are.

    Parameters
    ----------
    report : mapping
        A check report (JSON dict).
    paths : mapping, optional
        Files written (``html``, ``json``, ``junit``).

    Returns
    -------
    str
        Lines for the terminal (no trailing newline).
    """
    prov = report["provenance"]
    checks = report.get("checks", [])
    model = escape(prov["model"].get("source") or "in-memory model")
    total = prov["timings_s"].get("total", 0.0)
    policy = escape(prov["config"].get("policy", "policy"))
    lines = [f"explainkit check: {len(checks)} check(s) of {policy} on {model} in {total:.1f} s",
             f"  {'STATUS':<13}{'CHECK':<{_ID_WIDTH}}{'KIND':<17}{'EFFECT [CI]':<34}{'p adj':>8}{'n':>6}"
             f"{'tau':>7}{'MDE':>8}"]
    for c in checks:
        mark = "*" if c["gating"] else " "
        waiver = c.get("waiver")
        status = escape(c["status"].upper()) + (" (w)" if waiver else "")
        ident = escape(c["id"])
        ident = ident if len(ident) < _ID_WIDTH else ident[: _ID_WIDTH - 2] + "…"
        lines.append(f"{mark} {status:<13}{ident:<{_ID_WIDTH}}{escape(c['kind']):<17}{_effect(c['effect']):<34}"
                     f"{_num(c['p_adj']):>8}{_num(c['n']):>6}{_num(c['tau']):>7}{_num(c['mde']):>8}")
        if c["status"] != "pass":
            lines.append(f"      {escape(c['reason'])}")
        if waiver:
            state = "EXPIRED" if waiver.get("expired") else "active"
            lines.append(f"      waiver {state} (until {escape(waiver['expires'])}): {escape(waiver['reason'])}")
    lines.append("  (* gates the run; (w) waived)")
    reasons = next((s["data"].get("reasons", []) for s in report["sections"] if s["analyzer"] == "gate"), [])
    verdict = f"result: {escape(str(report['status']).upper())} (exit code {report['exit_code']})"
    lines.append(verdict + (": " + "; ".join(map(escape, reasons)) if reasons else ""))
    if paths:
        where = " · ".join(f"{k} {escape(v)}" for k, v in paths.items())
        lines.append(f"files: {where}")
    return "\n".join(lines)
