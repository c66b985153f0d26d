"""``explainkit check``: the spurious-correlation gate for CI."""

from __future__ import annotations

import json

import click

from explainkit.cli.options import load_handle, loading_options, parameter_sources, preprocessing_options
from explainkit.gate.annotations import annotation_lines, github_enabled, write_step_summary
from explainkit.gate.policy import load_policy
from explainkit.gate.runner import check as run_check
from explainkit.gate.text import format_summary
from explainkit.textsafe import inert_lines

__all__ = ["COMMANDS"]


@click.command("check")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "policy_path", required=True, envvar="EXPLAINKIT_POLICY", metavar="FILE",
              help="Policy file (TOML, version = 1); its relative paths are relative to its folder.")
@loading_options
@preprocessing_options
@click.option("--junit", metavar="FILE", envvar="EXPLAINKIT_JUNIT", help="Also write JUnit XML here.")
@click.option("--out", envvar="EXPLAINKIT_OUT", default="explainkit-check", show_default=True, metavar="DIR",
              help="Output folder for report.json and report.html.")
@click.option("--device", envvar="EXPLAINKIT_DEVICE", default="cpu", show_default=True)
@click.option("--batch-size", "batch_size", envvar="EXPLAINKIT_BATCH_SIZE", type=click.IntRange(1), default=32,
              show_default=True, help="Rows per forward pass (clean, treated and control images together).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="EXPLAINKIT_FORMAT", help="What goes to stdout.")
@click.option("--asset-budget-mb", "asset_budget_mb", type=click.FloatRange(0.1), default=20.0, show_default=True,
              help="Size budget for example images embedded in the report.")
@click.option("--follow-symlinks", "follow_symlinks", is_flag=True, default=False,
              help="Read probe files that are symlinks pointing outside their probe folder (refused by default).")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: when a TTY).")
@click.pass_context
def check(ctx: click.Context, model: str, policy_path: str, junit: str | None, out: str, **opts) -> int:
    """Run the checks of a policy on MODEL and gate on the result.

    Exit codes: 0 every gating check passed, 1 a gating check failed (or was inconclusive under
    on_inconclusive = "fail", or a waiver expired), 2 usage or policy error, 3 runtime error,
    4 model refused. Under GitHub Actions (GITHUB_ACTIONS=true) failing checks are also printed as
    ::error / ::warning annotations and the full table is appended to $GITHUB_STEP_SUMMARY.
    """
    policy = load_policy(policy_path)
    handle = load_handle(model, opts)
    resolved = parameter_sources(ctx, {"model": model, "policy_path": policy_path, "junit": junit, "out": out,
                                       **{k: v for k, v in opts.items() if k != "progress"}})
    result = run_check(handle, policy, out=out, junit=junit, device=opts["device"], batch_size=opts["batch_size"],
                       progress=opts["progress"], config=resolved, follow_symlinks=opts["follow_symlinks"],
                       asset_budget_bytes=int(opts["asset_budget_mb"] * 1024 * 1024))
    doc = result.report.data
    if github_enabled():
        for line in annotation_lines(doc, policy_file=policy_path):
            click.echo(line, err=opts["fmt"] == "json")
        write_step_summary(doc)
    if opts["fmt"] == "json":
        click.echo(json.dumps({k: v for k, v in doc.items() if k != "assets"}, indent=1, allow_nan=False))
    else:
        click.echo(inert_lines(format_summary(doc, result.paths)))
    return result.exit_code


COMMANDS = [check]
