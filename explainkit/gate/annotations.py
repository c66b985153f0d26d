"""GitHub Actions output: ``::error`` / ``::warning`` workflow commands and the step summary.

GitHub shows at most 10 error and 10 warning annotations per step, so the worst 10 of each level
are emitted (gating problems first) and the complete table goes to ``$GITHUB_STEP_SUMMARY``
(Markdown, appended). Annotations point at the policy line that defines the check. Values are
escaped as the runner expects (:mod:`explainkit.textsafe`): control characters removed, ``%``, CR
and LF encoded in messages, additionally ``:`` and ``,`` in properties; step-summary cells are
also Markdown-escaped (no links, images, HTML or cell breaks from a policy or the data).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from explainkit._io import atomic_write_text
from explainkit.textsafe import escape, escape_markdown, escape_property

__all__ = ["MAX_PER_LEVEL", "annotation_lines", "github_enabled", "step_summary_markdown", "write_step_summary"]

#: GitHub's per-step limit for each annotation level.
MAX_PER_LEVEL = 10


def github_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether we run inside GitHub Actions (``GITHUB_ACTIONS=true``)."""
    return (os.environ if env is None else env).get("GITHUB_ACTIONS") == "true"


def _level(c: Mapping[str, Any], on_inconclusive: str) -> str | None:
    waiver = c.get("waiver")
    if waiver and waiver.get("expired"):
        return "error"
    if c["status"] == "pass":
        return None
    if c["gating"] and (c["status"] in ("fail", "error")
                        or (c["status"] == "inconclusive" and on_inconclusive == "fail")):
        return "error"
    return "warning"


def _message(c: Mapping[str, Any]) -> str:
    waiver = c.get("waiver")
    if waiver and waiver.get("expired"):
        return f"waiver expired on {waiver['expires']} ({waiver['reason']}); check status {c['status'].upper()}: " \
               f"{c['reason']}"
    extra = f" (waived until {waiver['expires']}: {waiver['reason']})" if waiver else ""
    scope = "" if c["gating"] else f" [{c['severity']}]"
    return f"{c['status'].upper()}{scope} {c['kind']}: {c['reason']}{extra}"


def _relative(path: str, env: Mapping[str, str]) -> str:
    workspace = env.get("GITHUB_WORKSPACE")
    p = Path(path).resolve()
    if workspace:
        try:
            return p.relative_to(Path(workspace).resolve()).as_posix()
        except ValueError:
            pass
    try:
        return p.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return p.as_posix()


def annotation_lines(report: Mapping[str, Any], *, policy_file: str | None = None,
                     env: Mapping[str, str] | None = None) -> list[str]:
    """Workflow commands for every check that did not pass (at most 10 per level).

    Parameters
    ----------
    report : mapping
        A check report (JSON dict).
    policy_file : str, optional
        The policy path, for ``file=`` / ``line=`` (made relative to ``GITHUB_WORKSPACE``).
    env : mapping, optional
        Environment (default ``os.environ``).

    Returns
    -------
    list of str
        ``::error file=...,line=...,title=...::message`` lines, errors first.
    """
    env = os.environ if env is None else env
    section = next((s for s in report.get("sections", []) if s["analyzer"] == "gate"), None)
    on_inconclusive = (section or {}).get("params", {}).get("on_inconclusive", "warn")
    by_level: dict[str, list[str]] = {"error": [], "warning": []}
    for c in report.get("checks", []):
        level = _level(c, on_inconclusive)
        if level is None:
            continue
        props = []
        if policy_file:
            props.append(f"file={escape_property(_relative(policy_file, env))}")
            if c.get("line"):
                props.append(f"line={int(c['line'])}")
        title = "explainkit check " + str(c["id"])
        props.append(f"title={escape_property(title)}")
        by_level[level].append(f"::{level} {','.join(props)}::{escape(_message(c))}")
    return by_level["error"][:MAX_PER_LEVEL] + by_level["warning"][:MAX_PER_LEVEL]


def _cell(value: Any) -> str:
    return "–" if value is None else (f"{value:.3g}" if isinstance(value, float) else escape_markdown(value))


def step_summary_markdown(report: Mapping[str, Any]) -> str:
    """The complete check table as Markdown (for ``$GITHUB_STEP_SUMMARY``)."""
    code = report.get("exit_code")
    lines = [f"### explainkit check: {escape_markdown(str(report.get('status', '')).upper())} (exit code {code})", "",
             "| status | check | kind | gating | effect [CI] | unit | p (adj.) | n | tau | MDE | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report.get("checks", []):
        e = c["effect"]
        effect = _cell(e["value"]) + (f" [{_cell(e['ci_low'])}, {_cell(e['ci_high'])}]" if e["ci_low"] is not None
                                      else "")
        lines.append("| " + " | ".join([
            f"**{_cell(c['status'].upper())}**", _cell(c["id"]), _cell(c["kind"]), "yes" if c["gating"] else "no",
            effect,
            _cell(e["unit"]), _cell(c["p_adj"]), _cell(c["n"]), _cell(c["tau"]), _cell(c["mde"]), _cell(c["reason"]),
        ]) + " |")
    return "\n".join(lines) + "\n"


def write_step_summary(report: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path | None:
    """Append the Markdown table to ``$GITHUB_STEP_SUMMARY`` (atomically), when it is set."""
    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    return atomic_write_text(path, existing + step_summary_markdown(report))

