"""``explainkit discover``: rank candidate spurious cues and write a policy that would test them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from explainkit.cli.options import (
    backend_options,
    backend_settings,
    config_option,
    data_options,
    load_handle,
    load_probe,
    loading_options,
    output_options,
    parameter_sources,
    preprocessing_options,
)
from explainkit.discovery.analyzer import CORRECTIONS, SOURCES
from explainkit.errors import ExitCode
from explainkit.run import DiscoveryResult, discover

__all__ = ["COMMANDS"]

#: Command-line flags that set a parameter of the ``discovery`` analyzer.
_PARAMS = ("tau", "alpha", "correction", "max_candidates", "sources")


def _printable(text: object) -> str:
    """Cue names come from data (concept columns): no control characters reach the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def _summary(result: DiscoveryResult, out: Path) -> str:
    data = result.report.section("discovery")["data"]
    lines = [f"explainkit discover: {len(result.candidates)} candidate(s) tested on "
             f"{data['split']['n_confirmation']} held-out images, {len(result.significant)} significant "
             f"({data['correction']}, alpha {data['alpha']}, effect > tau {data['effect_definition']['tau']})"]
    for c in result.candidates[:10]:
        mark = "*" if c["significant"] else " "
        cue, target = _printable(c["cue"]), _printable(c["target_class"])
        lines.append(f" {mark}{c['rank']:>3}. [{c['source']}] {cue} -> {target}: {c['effect']:+.3f} "
                     f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}], p_adj {c['p_adj']:.2g}, "
                     f"n {c['n_members']}")
    if len(result.candidates) > 10:
        lines.append(f"  ... {len(result.candidates) - 10} more in the report")
    lines.append(f"report: {out / 'report.html'} (JSON: {out / 'report.json'})")
    lines.append(f"policy: {out / 'policy.toml'}" if result.policy else "policy: none (no candidate to test)")
    return "\n".join(lines)


@click.command("discover")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@config_option
@data_options
@click.option("--layer", envvar="EXPLAINKIT_LAYER", metavar="NAME",
              help="Embedding layer (dotted name; default: the last spatial layer, mean-pooled; @logits).")
@click.option("--tau", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Materiality margin: a candidate is significant only if its pull toward the target class "
                   "exceeds this probability [default 0.2].")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Significance level after the correction [default 0.05].")
@click.option("--correction", type=click.Choice(CORRECTIONS), default=None,
              help="Correction over the tested candidates [default holm].")
@click.option("--max-candidates", "max_candidates", type=click.IntRange(1), default=None,
              help="Candidates carried from screening to the held-out test [default 20].")
@click.option("--source", "sources", type=click.Choice(SOURCES), multiple=True,
              help="Candidate source to run (repeatable; default: every source the model and data allow).")
@click.option("--policy-top", "policy_top", type=click.IntRange(1), default=5, show_default=True,
              help="Cue groups the generated policy.toml tests.")
@loading_options
@preprocessing_options
@output_options("explainkit-discover")
@backend_options
@click.pass_context
def discover_command(ctx: click.Context, model: str, config: str | None, data: str | None, **opts) -> int:
    """Rank candidate spurious cues of MODEL on a probe set (nobody has to name them first).

    Writes report.json / report.html (section "discovery": candidates best first, each with its
    effect, CI and adjusted p-value, its member images and examples), policy.toml with the checks
    that would test the top candidates (run it with `explainkit check`), and members/ (the slices'
    image lists). Other parameters of the discovery analyzer: the [analyzer.discovery] table of
    --config. Exit codes: 0 ran (with or without candidates), 2 usage or data error, 3 runtime
    error, 4 model refused.
    """
    table = dict((ctx.meta.get("explainkit.config_file", {}).get("analyzer") or {}).get("discovery") or {})
    flags = {k: opts.pop(k) for k in _PARAMS}
    flags["sources"] = list(flags["sources"]) or None
    params = {**table, **{k: v for k, v in flags.items() if v is not None}}
    layer, policy_top = opts.pop("layer"), opts.pop("policy_top")
    probe = load_probe(data, opts)
    handle = load_handle(model, opts)
    resolved = parameter_sources(ctx, {"model": model, "data": data, "config": config, "layer": layer,
                                       "policy_top": policy_top,
                                       **{k: v for k, v in opts.items() if k != "progress"}})
    resolved["discovery"] = {"value": params, "source": "command line / config file" if params else "default"}
    result = discover(
        handle, probe, out=opts["out"], params=params, device=opts["device"], batch_size=opts["batch_size"],
        seed=opts["seed"], layer=layer, progress=opts["progress"], config=resolved,
        asset_budget_bytes=int(opts["asset_budget_mb"] * 1024 * 1024), backend=opts["backend"],
        backend_options=backend_settings(opts, resolved), policy_top=policy_top,
    )
    if opts["backend"] == "torchrun" and os.environ.get("RANK", "0") != "0":
        return ExitCode.OK
    if opts["fmt"] == "json":
        doc = result.report.to_dict()
        doc["assets"] = {}
        click.echo(json.dumps(doc, indent=1, allow_nan=False))
    else:
        click.echo(_summary(result, Path(opts["out"])))
    return ExitCode.OK


COMMANDS = [discover_command]
