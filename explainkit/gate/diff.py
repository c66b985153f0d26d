"""Compare two model versions from their ``report.json`` files alone (no model is loaded).

What is compared, by stable key:

* gate checks (``check`` reports), by check id: status, effect, and the change of the effect. When
  both reports hold per-image effects of the same images (``details.per_image``), the change is
  paired: ``d_i = effect_new_i - effect_old_i`` over the common images, its mean with a percentile
  bootstrap CI and a one-sided Wilcoxon signed-rank p of ``d > 0``. Otherwise the two estimates are
  treated as independent: ``se = sqrt(se_old^2 + se_new^2)`` with each ``se`` read from its CI
  (``(high - low) / (2 z)``), a normal CI and p. For two models scored on the same images the
  estimates are positively correlated, so this interval is conservative (too wide).
* discovery candidates, by candidate id (``source:slice>target``): effect, significance, and the
  change. When the candidate has the same members and target in both reports, the change is
  paired: the stratified difference (:func:`explainkit.stats.stratified_difference`, Welch) of
  the per-image change of the target probability, members against their class-mates, over the
  images both reports put in the confirmation split (``data.per_image``); else independent;
* performance slices, by slice name and class: accuracy and its change (independent);
* INVERT artifact units (``invert`` and ``discovery`` sections), by layer and unit: new and gone.

A finding is *new* when a check fails (or a candidate is significant) in the new report but not in
the old one, *gone* in the reverse case.

Regression rules (``[[regression]]`` in a TOML file, :func:`load_regressions`) name a check or a
candidate and a materiality threshold ``tau`` in the effect's unit. The growth of its effect is
decided like a gate check (:func:`explainkit.gate.decision.decide`): FAIL when the Holm-adjusted p
of "growth > 0" is below ``alpha`` and the growth is at least ``tau``; PASS when the CI's upper
bound is below ``tau``; INCONCLUSIVE otherwise (also when the item is missing from a report).
"""

from __future__ import annotations

import html
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from explainkit.errors import ConfigError, DataError, ExitCode
from explainkit.gate.decision import decide
from explainkit.gate.kinds.base import Measurement
from explainkit.stats import adjust_pvalues, bootstrap_ci, stratified_difference, wilcoxon_signed_rank

__all__ = ["Regression", "diff_reports", "load_regressions", "load_report", "render_diff_html"]

_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Regression:
    """A regression rule: the effect of ``item`` (a check id or a candidate id) must not grow by ``tau`` or more."""

    item: str
    tau: float
    min_images: int = 10


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a ``report.json`` written by ``analyze``, ``discover`` or ``check``.

    Raises
    ------
    DataError
        Missing, too large, not JSON, or not an explainkit report.
    """
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_BYTES:
            raise DataError(f"{p}: larger than {_MAX_BYTES // 2**20} MiB; not a report")
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read report {p}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") not in ("analysis", "check") or "sections" not in doc:
        raise DataError(f"{p} is not an explainkit report (no kind 'analysis' or 'check')")
    return doc


def load_regressions(path: str | Path) -> tuple[list[Regression], float]:
    """Read regression rules: ``version = 1``, optional ``[defaults] alpha``, ``[[regression]] item, tau``.

    Returns
    -------
    rules : list of Regression
    alpha : float
        Significance level after Holm's correction over the rules (default 0.05).

    Raises
    ------
    ConfigError
        Unreadable file, unknown keys, bad values.
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read regression rules {p}: {exc}") from None
    unknown = set(doc) - {"version", "defaults", "regression"}
    if doc.get("version") != 1 or unknown:
        raise ConfigError(f"{p}: expected version = 1 and only [defaults] and [[regression]]"
                          + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    alpha = doc.get("defaults", {}).get("alpha", 0.05)
    if set(doc.get("defaults", {})) - {"alpha"} or not isinstance(alpha, float) or not 0 < alpha < 1:
        raise ConfigError(f"{p}: [defaults] takes only alpha, a number in (0, 1)")
    rules = []
    for k, r in enumerate(doc.get("regression", [])):
        extra = set(r) - {"item", "tau", "min_images"}
        tau, item, min_images = r.get("tau"), r.get("item"), r.get("min_images", 10)
        if extra or not isinstance(item, str) or not item or isinstance(tau, bool) \
                or not isinstance(tau, int | float) or not math.isfinite(tau) or tau < 0 \
                or not isinstance(min_images, int) or min_images < 1:
            raise ConfigError(f"{p}: regression[{k}] needs item (a check or candidate id), tau >= 0 and optionally "
                              "min_images >= 1, nothing else")
        rules.append(Regression(item, float(tau), min_images))
    if not rules:
        raise ConfigError(f"{p}: no [[regression]] rule")
    return rules, float(alpha)


# -- changes --------------------------------------------------------------------------------
def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def _se(value: float | None, low: float | None, high: float | None, confidence: float) -> float | None:
    if value is None or low is None or high is None or not all(map(math.isfinite, (value, low, high))):
        return None
    return (high - low) / (2 * _z(confidence))


def _independent(old: dict | None, new: dict | None, confidence: float) -> dict[str, Any] | None:
    """Change of a ``metric`` dict (value, ci_low, ci_high, n) between reports, estimates independent."""
    if old is None or new is None or old.get("value") is None or new.get("value") is None:
        return None
    se_old = _se(old["value"], old.get("ci_low"), old.get("ci_high"), confidence)
    se_new = _se(new["value"], new.get("ci_low"), new.get("ci_high"), confidence)
    value = float(new["value"] - old["value"])
    if se_old is None or se_new is None:
        return {"value": value, "ci": None, "p": None, "se": None, "n": None, "paired": False}
    se = math.hypot(se_old, se_new)
    z = _z(confidence)
    p = float(stats.norm.sf(value / se)) if se > 0 else float(value <= 0)
    return {"value": value, "ci": [value - z * se, value + z * se], "p": p, "se": se,
            "n": min(int(old.get("n") or 0), int(new.get("n") or 0)), "paired": False}


def _paired(old: dict, new: dict, confidence: float, n_resamples: int, seed: int) -> dict[str, Any] | None:
    """Change of per-image effects over the images both reports scored (None without common images)."""
    a = dict(zip(old.get("ids", []), old.get("effect", [])))
    common = [i for i, v in zip(new.get("ids", []), new.get("effect", [])) if i in a and v is not None
              and a[i] is not None]
    if not common:
        return None
    b = dict(zip(new["ids"], new["effect"]))
    d = np.array([b[i] - a[i] for i in common], dtype=np.float64)
    ci = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    test = wilcoxon_signed_rank(d, alternative="greater")
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
    return {"value": float(d.mean()), "ci": [float(ci[0]), float(ci[1])], "p": float(test.p), "se": se,
            "n": int(d.size), "paired": True}


def _paired_candidate(old: dict, new: dict, o: dict, n: dict, confidence: float) -> dict[str, Any] | None:
    """Paired change of a candidate with the same members and target in both discovery sections."""
    po = ((_section(old, "discovery") or {}).get("data") or {}).get("per_image") or {}
    pn = ((_section(new, "discovery") or {}).get("data") or {}).get("per_image") or {}
    target = n.get("target_class")
    if o.get("target_class") != target or sorted(o.get("members", [])) != sorted(n.get("members", [])) \
            or target not in po.get("prob", {}) or target not in pn.get("prob", {}):
        return None
    before = {sid: (p, split) for sid, p, split in zip(po["ids"], po["prob"][target], po["split"])}
    rows = [(sid, p, before[sid][0], label) for sid, p, split, label in
            zip(pn["ids"], pn["prob"][target], pn["split"], pn["label"])
            if split == "confirmation" and sid in before and before[sid][1] == "confirmation"]
    if not rows:
        return None
    members = set(n["members"])
    labels = [r[3] for r in rows]
    strata = np.array([sorted(set(labels)).index(x) if x is not None else -1 for x in labels])
    delta = np.array([r[1] - r[2] for r in rows], dtype=np.float64)
    sd = stratified_difference(delta, np.array([r[0] in members for r in rows]), strata, confidence=confidence)
    if not math.isfinite(float(sd.effect[0])):
        return None
    return {"value": float(sd.effect[0]), "ci": [float(sd.ci_low[0]), float(sd.ci_high[0])], "p": float(sd.p[0]),
            "se": float(sd.se[0]), "n": int(sd.n_member), "paired": True}


def _metric_of_check(c: dict) -> dict:
    e = c.get("effect") or {}
    return {"value": e.get("value"), "ci_low": e.get("ci_low"), "ci_high": e.get("ci_high"), "n": c.get("n"),
            "unit": e.get("unit")}


def _metric_of_candidate(c: dict) -> dict:
    ci = c.get("ci") or [None, None]
    return {"value": c.get("effect"), "ci_low": ci[0], "ci_high": ci[1], "n": c.get("n_members"),
            "unit": "probability of the target class"}


def _section(doc: dict, analyzer: str) -> dict | None:
    return next((s for s in doc.get("sections", []) if s.get("analyzer") == analyzer), None)


def _candidates(doc: dict) -> dict[str, dict]:
    s = _section(doc, "discovery")
    return {c["id"]: c for c in (s or {}).get("data", {}).get("candidates", [])}


def _slices(doc: dict) -> dict[str, dict]:
    s = _section(doc, "performance")
    out = {}
    for sl in (s or {}).get("data", {}).get("slices", []):
        key = sl["slice"] if sl.get("class") is None else f"{sl['class']} & {sl['slice']}"
        out[key] = sl
    return out


def _artifact_units(doc: dict) -> dict[str, str]:
    units: dict[str, str] = {}
    inv = _section(doc, "invert")
    for u in (inv or {}).get("data", {}).get("artifact_neurons", []) or []:
        units[f"{u['layer']}/{u['neuron']}"] = u.get("formula", "")
    disc = _section(doc, "discovery")
    for u in (disc or {}).get("data", {}).get("sources", {}).get("invert", {}).get("artifact_units", []) or []:
        units.setdefault(f"{u['layer']}/{u['unit']}", u.get("formula", ""))
    return units


def _compare(old: dict[str, dict], new: dict[str, dict], metric_of, flagged, confidence: float,
             paired_of=None) -> tuple[list[dict], list[str], list[str]]:
    rows, appeared, gone = [], [], []
    for key in sorted(set(old) | set(new)):
        o, n = old.get(key), new.get(key)
        mo, mn = (metric_of(o) if o else None), (metric_of(n) if n else None)
        change = paired_of(key, o, n) if paired_of and o and n else None
        change = change or _independent(mo, mn, confidence)
        rows.append({"id": key, "old": mo, "new": mn, "change": change,
                     "flagged_old": bool(o and flagged(o)), "flagged_new": bool(n and flagged(n))})
        if rows[-1]["flagged_new"] and not rows[-1]["flagged_old"]:
            appeared.append(key)
        if rows[-1]["flagged_old"] and not rows[-1]["flagged_new"]:
            gone.append(key)
    return rows, appeared, gone


def diff_reports(old: dict[str, Any], new: dict[str, Any], *, regressions: list[Regression] | None = None,
                 alpha: float = 0.05, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Compare two reports (see the module docstring).

    Parameters
    ----------
    old, new : dict
        ``report.json`` documents (:func:`load_report`).
    regressions : list of Regression, optional
        Rules to decide; Holm's correction runs over them.
    alpha : float
        Significance level of the rules.
    confidence : float
        Level of every CI.
    n_resamples : int
        Bootstrap resamples of paired changes.
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        ``checks``, ``candidates``, ``slices`` (rows with ``old``, ``new``, ``change``),
        ``artifact_units`` (``new``, ``gone``, ``kept``), ``findings`` (``new`` / ``gone``),
        ``regressions`` (decided rules), ``status`` (``pass``, ``fail``, ``inconclusive`` or
        ``ok`` without rules), ``exit_code`` and the two reports' provenance.
    """
    old_checks = {c["id"]: c for c in old.get("checks", [])}
    new_checks = {c["id"]: c for c in new.get("checks", [])}

    def paired_check(key: str, o: dict, n: dict) -> dict | None:
        po, pn = (o.get("details") or {}).get("per_image"), (n.get("details") or {}).get("per_image")
        return _paired(po, pn, confidence, n_resamples, seed) if po and pn else None

    checks, new_fail, gone_fail = _compare(old_checks, new_checks, _metric_of_check,
                                           lambda c: c.get("status") == "fail", confidence, paired_check)
    for row in checks:
        row["status_old"] = (old_checks.get(row["id"]) or {}).get("status")
        row["status_new"] = (new_checks.get(row["id"]) or {}).get("status")
    cands, new_sig, gone_sig = _compare(_candidates(old), _candidates(new), _metric_of_candidate,
                                        lambda c: bool(c.get("significant")), confidence,
                                        lambda _key, o, n: _paired_candidate(old, new, o, n, confidence))
    slices, _, _ = _compare(_slices(old), _slices(new), lambda s: s["accuracy"], lambda s: False, confidence)
    uo, un = _artifact_units(old), _artifact_units(new)
    units = {"new": [{"unit": k, "formula": un[k]} for k in sorted(set(un) - set(uo))],
             "gone": [{"unit": k, "formula": uo[k]} for k in sorted(set(uo) - set(un))],
             "kept": sorted(set(uo) & set(un))}
    rules = _decide(regressions or [], {r["id"]: r for r in checks + cands}, alpha)
    statuses = {r["status"] for r in rules}
    status = "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else \
        "pass" if rules else "ok"
    return {
        "kind": "diff", "status": status,
        "exit_code": int(ExitCode.FINDINGS if status == "fail" else ExitCode.OK),
        "reports": {"old": old.get("provenance", {}), "new": new.get("provenance", {})},
        "change_definition": "new minus old; paired over common images when both reports hold per-image "
                             "effects, else independent estimates (se from each CI; conservative)",
        "confidence": confidence, "alpha": alpha,
        "checks": checks, "candidates": cands, "slices": slices, "artifact_units": units,
        "findings": {"new": [f"check {k} fails" for k in new_fail] + [f"candidate {k} significant" for k in new_sig],
                     "gone": [f"check {k} fails" for k in gone_fail]
                     + [f"candidate {k} significant" for k in gone_sig]},
        "regressions": rules,
    }


def _decide(rules: list[Regression], rows: dict[str, dict], alpha: float) -> list[dict[str, Any]]:
    """Decide every rule like a gate check, with Holm over the rules."""
    changes = [rows.get(r.item, {}).get("change") for r in rules]
    p = np.array([c["p"] if c and c.get("p") is not None else np.nan for c in changes], dtype=np.float64)
    p_adj = adjust_pvalues(p, "holm") if len(p) else p
    out = []
    for rule, change, pa in zip(rules, changes, p_adj):
        if change is None or change.get("ci") is None:
            out.append({"item": rule.item, "tau": rule.tau, "status": "inconclusive", "change": change,
                        "p_adj": None, "reason": "not in both reports, or no CI to compare"})
            continue
        m = Measurement(effect=change["value"], ci=tuple(change["ci"]), p=change["p"], n=change["n"] or 0,
                        n_planned=change["n"] or 0, se=change["se"] or float("nan"), unit="")
        status, reason = decide(m, p_adj=float(pa), alpha=alpha, tau=rule.tau, min_images=rule.min_images)
        out.append({"item": rule.item, "tau": rule.tau, "status": status, "change": change, "p_adj": float(pa),
                    "reason": reason})
    return out


# -- HTML ---------------------------------------------------------------------------------------
def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _change_cell(c: dict | None) -> str:
    if c is None:
        return "–"
    ci = f" [{_num(c['ci'][0])}, {_num(c['ci'][1])}]" if c.get("ci") else ""
    how = "paired" if c.get("paired") else "independent"
    return f"{c['value']:+.3g}{ci} (p {_num(c.get('p'))}, n {c.get('n')}, {how})"


def _table(title: str, rows: list[dict], extra: tuple[str, ...] = ()) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("item", "old", "new", "change (new − old), CI, p", *extra))
    body = []
    for r in rows:
        cells = [r["id"], _num((r["old"] or {}).get("value")), _num((r["new"] or {}).get("value")),
                 _change_cell(r["change"])] + [str(r.get(k)) for k in ("status_old", "status_new") if k in r]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{''.join(body)}</table>"


def render_diff_html(d: dict[str, Any]) -> str:
    """A self-contained HTML page of a diff (every value from data escaped)."""
    rules = "".join(f"<tr><td>{html.escape(r['item'])}</td><td>{html.escape(r['status'].upper())}</td>"
                    f"<td>{_num(r['tau'])}</td><td>{html.escape(_change_cell(r['change']))}</td>"
                    f"<td>{_num(r['p_adj'])}</td><td>{html.escape(r['reason'])}</td></tr>" for r in d["regressions"])
    findings = "".join(f"<li>new: {html.escape(f)}</li>" for f in d["findings"]["new"]) + \
        "".join(f"<li>gone: {html.escape(f)}</li>" for f in d["findings"]["gone"])
    units = "".join(f"<li>{what}: {html.escape(u['unit'])} ({html.escape(u['formula'])})</li>"
                    for what in ("new", "gone") for u in d["artifact_units"][what])
    parts = [
        f"<h1>explainkit diff: {html.escape(d['status'].upper())}</h1>",
        f"<p>{html.escape(d['change_definition'])}; {d['confidence']:.0%} CIs.</p>",
        (f"<h2>Regression rules (Holm, alpha {d['alpha']:g})</h2><table><tr><th>item</th><th>status</th><th>tau</th>"
         f"<th>growth, CI, p</th><th>adjusted p</th><th>reason</th></tr>{rules}</table>") if rules else "",
        f"<h2>Findings</h2><ul>{findings or '<li>no finding appeared or went</li>'}</ul>",
        _table("Gate checks: effect", d["checks"], ("status old", "status new")),
        _table("Discovery candidates: effect (probability of the target class)", d["candidates"]),
        _table("Accuracy per slice", d["slices"]),
        f"<h2>INVERT artifact units</h2><ul>{units or '<li>no change</li>'}</ul>",
    ]
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;" \
            "padding:3px 6px;text-align:left}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>explainkit diff</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
