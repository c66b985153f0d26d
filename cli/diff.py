"""``explainkit diff``: compare two model versions from their report.json files (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from explainkit._io import atomic_write_text
from explainkit.errors import ConfigError, ExitCode
from explainkit.gate.diff import diff_reports, load_regressions, load_report, render_diff_html
from explainkit.report.jsonify import jsonable

__all__ = ["COMMANDS"]


def _summary(d: dict) -> str:
    lines = [f"explainkit diff: {d['status'].upper()}"]
    for r in d["regressions"]:
        c = r["change"]
        growth = f"{c['value']:+.3g} [{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]" if c and c.get("ci") else "n/a"
        lines.append(f"  {r['status'].upper():12} {r['item']}: growth {growth}, tau {r['tau']:g} ({r['reason']})")
    for what in ("new", "gone"):
        lines += [f"  {what}: {f}" for f in d["findings"][what]]
    lines += [f"  INVERT artifact unit {what}: {u['unit']}" for what in ("new", "gone")
              for u in d["artifact_units"][what]]
    return "\n".join(lines)


@click.command("diff")
@click.argument("old", type=click.Path(exists=True, dir_okay=False))
@click.argument("new", type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Regression rules ([[regression]] item, tau): exit 1 when one fails.")
@click.option("--out", default="explainkit-diff", show_default=True, metavar="DIR",
              help="Folder for diff.json and diff.html.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed of paired changes.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="What goes to stdout.")
def diff_command(old: str, new: str, policy_path: str | None, out: str, seed: int, fmt: str) -> int:
    """Compare two model versions: OLD/report.json against NEW/report.json.

    Effects and their change with CIs, findings that are new or gone, accuracy per slice and
    INVERT artifact units; diff.json and diff.html go to --out.

    Exit codes: 0 compared (no rule failed), 1 a regression rule failed, 2 unreadable report or rules.
    """
    rules, alpha = load_regressions(policy_path) if policy_path else ([], 0.05)
    d = diff_reports(load_report(old), load_report(new), regressions=rules, alpha=alpha, seed=seed)
    d = jsonable({**d, "inputs": {"old": str(old), "new": str(new), "policy": policy_path}})
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {folder}: {exc}") from None
    atomic_write_text(folder / "diff.json", json.dumps(d, indent=1, allow_nan=False))
    atomic_write_text(folder / "diff.html", render_diff_html(d))
    click.echo(json.dumps(d, indent=1, allow_nan=False) if fmt == "json" else _summary(d))
    return ExitCode(d["exit_code"])


COMMANDS = [diff_command]
