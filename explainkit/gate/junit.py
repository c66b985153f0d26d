"""JUnit XML of a check report: one ``<testsuite>`` per check kind, one ``<testcase>`` per check.

FAIL → ``<failure>``, INCONCLUSIVE → ``<skipped>``, ERROR → ``<error>``; a check under an active
waiver that did not pass → ``<skipped>`` naming the waiver; an expired waiver → ``<failure>``. The
numbers (effect, CI, p, adjusted p, n, tau, MDE, ...) are ``<property>`` elements of the test case.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

__all__ = ["to_junit_xml"]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _properties(parent: ET.Element, items: Mapping[str, Any]) -> None:
    props = ET.SubElement(parent, "properties")
    for key, value in items.items():
        ET.SubElement(props, "property", name=key, value=_fmt(value))


def _message(c: Mapping[str, Any]) -> str:
    scope = "" if c["gating"] else f" [{c['severity']}, not gating]"
    return f"{c['status'].upper()}{scope}: {c['reason']}"


def _case(suite: ET.Element, c: Mapping[str, Any]) -> str:
    case = ET.SubElement(suite, "testcase", classname=f"explainkit.{c['kind']}", name=c["id"],
                         time=_fmt(c["provenance"].get("elapsed_s", 0.0)))
    effect = c["effect"]
    _properties(case, {
        "status": c["status"], "severity": c["severity"], "gating": c["gating"], "effect": effect["value"],
        "ci_low": effect["ci_low"], "ci_high": effect["ci_high"], "unit": effect["unit"], "p": c["p"],
        "p_adj": c["p_adj"], "correction": c["correction"], "alpha": c["alpha"], "n": c["n"],
        "n_planned": c["n_planned"], "tau": c["tau"], "mde": c["mde"], "seed": c["seed"],
        "truncated": c["truncated"], "policy_line": c["line"],
    })
    waiver = c.get("waiver")
    body = "\n".join([c["reason"], *c.get("notes", [])])
    if waiver and waiver.get("expired"):
        ET.SubElement(case, "failure", message=f"waiver expired on {waiver['expires']}: {waiver['reason']}",
                      type="ExpiredWaiver").text = body
        return "failure"
    if waiver and c["status"] != "pass":
        ET.SubElement(case, "skipped", message=f"waived until {waiver['expires']} ({waiver['reason']}); "
                                               f"{_message(c)}")
        return "skipped"
    if c["status"] == "fail":
        ET.SubElement(case, "failure", message=_message(c), type="SpuriousReliance").text = body
        return "failure"
    if c["status"] == "inconclusive":
        ET.SubElement(case, "skipped", message=_message(c))
        return "skipped"
    if c["status"] == "error":
        ET.SubElement(case, "error", message=_message(c), type="CheckError").text = c.get("error") or body
        return "error"
    ET.SubElement(case, "system-out").text = body
    return "pass"


def to_junit_xml(report: Mapping[str, Any]) -> str:
    """Render a check report (its JSON dict) as JUnit XML.

    Parameters
    ----------
    report : mapping
        A report with ``kind == "check"``.

    Returns
    -------
    str
        The XML document (UTF-8 declaration included).
    """
    checks = report.get("checks", [])
    prov = report.get("provenance", {})
    root = ET.Element("testsuites", name="explainkit check")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    kinds = list(dict.fromkeys(c["kind"] for c in checks))
    for kind in kinds:
        suite = ET.SubElement(root, "testsuite", name=f"explainkit.{kind}", timestamp=report.get("created_utc", ""))
        _properties(suite, {"policy": prov.get("config", {}).get("policy"),
                            "policy_sha256": prov.get("config", {}).get("policy_sha256"),
                            "model_sha256": prov.get("model", {}).get("sha256"),
                            "explainkit": prov.get("versions", {}).get("explainkit")})
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        elapsed = 0.0
        for c in checks:
            if c["kind"] != kind:
                continue
            outcome = _case(suite, c)
            counts["tests"] += 1
            key = {"failure": "failures", "error": "errors", "skipped": "skipped"}.get(outcome)
            if key:
                counts[key] += 1
            elapsed += float(c["provenance"].get("elapsed_s") or 0.0)
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
        suite.set("time", _fmt(elapsed))
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", _fmt(prov.get("timings_s", {}).get("total", 0.0)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
