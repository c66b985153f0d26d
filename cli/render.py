"""Text rendering of reports for the terminal (stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from explainkit.report import Report
from explainkit.textsafe import escape

__all__ = ["format_metric", "print_summary"]


def format_metric(m: Any) -> str:
    """``0.931 [0.902, 0.955]`` for a metric dict, or the plain value."""
    if isinstance(m, dict) and "value" in m:
        if m["value"] is None:
            return "–"
        text = f"{m['value']:.3g}"
        if m.get("ci_low") is not None:
            text += f" [{m['ci_low']:.3g}, {m['ci_high']:.3g}]"
        return text
    if isinstance(m, float):
        return f"{m:.3g}"
    return escape(m)


def print_summary(report: Report, out: Path | None) -> None:
    """One screen: status, findings, one line per section, where the files are (untrusted text escaped)."""
    data = report.data
    probe = data["provenance"].get("data") or {}
    n, noun = probe.get("n_images"), "volumes" if probe.get("kind") == "volumes" else "images"
    total = data["provenance"]["timings_s"].get("total", 0.0)
    click.echo(f"explainkit {data['kind']}: {len(report.sections)} analyzer(s) on {n} {noun} in {total:.1f} s")
    click.echo(f"status: {report.status.upper()}")
    for f in report.findings:
        click.echo(f"  {escape(f['severity'].upper()):8s} {escape(f['analyzer'])}: {escape(f['message'])}")
    for s in report.sections:
        parts = [f"{k.replace('_', ' ')} {format_metric(v)}" for k, v in s["summary"].items()
                 if not isinstance(v, list | dict) or "value" in v]
        click.echo(f"  {escape(s['analyzer']):<14s} " + " · ".join(parts))
    if out is not None:
        click.echo(f"report: {escape(out / 'report.html')} (JSON: {escape(out / 'report.json')})")
