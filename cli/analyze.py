"""``explainkit analyze``."""

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
from explainkit.cli.render import print_summary
from explainkit.config import merge_analyzer_specs
from explainkit.errors import ExitCode
from explainkit.run import TASK_OPTION
from explainkit.run import analyze as run_analyze

__all__ = ["COMMANDS"]

_SEVERITY = {"never": set(), "error": {"error"}, "warning": {"error", "warning"}}


@click.command("analyze")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@config_option
@data_options
@click.option("--analyzer", "analyzers", multiple=True, metavar="NAME[:k=v,...]",
              help="Analyzer to run (repeatable); parameters as key=value, lists as a|b. "
                   "Default: every default analyzer the model and data support.")
@click.option("--task", envvar="EXPLAINKIT_TASK", metavar="|".join(TASK_OPTION.allowed_choices()),
              help=f"What the model's outputs mean: {TASK_OPTION.help}.")
@click.option("--layer", envvar="EXPLAINKIT_LAYER", metavar="NAME",
              help="Target layer for layer-based analyzers (dotted name).")
@loading_options
@preprocessing_options
@output_options("explainkit-out")
@click.option("--fail-on", "fail_on", type=click.Choice(["never", "error", "warning"]), default="never",
              show_default=True, envvar="EXPLAINKIT_FAIL_ON",
              help="Exit with 1 when a finding of this severity (or worse) is reported.")
@backend_options
@click.option("--cache", "cache", is_flag=True, default=False, envvar="EXPLAINKIT_CACHE",
              help="Reuse cached per-batch activations (INVERT) across runs; folder: --cache-dir.")
@click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False), envvar="EXPLAINKIT_CACHE_DIR",
              help="Cache folder (implies --cache; default ~/.cache/explainkit). Share it between workers.")
@click.option("--time-budget", "time_budget", envvar="EXPLAINKIT_TIME_BUDGET", metavar="DURATION",
              help="Wall-clock budget of the run (e.g. 10m, 1h30m, 90s): analyzers size their samples to fit "
                   "and say in the report what they cut. Default: no budget (sample sizes by precision only).")
@click.option("--autocast", type=click.Choice(["bfloat16", "float16"]), envvar="EXPLAINKIT_AUTOCAST",
              help="Model passes under CUDA autocast (statistics stay float32); ignored on the CPU.")
@click.option("--progress-interval", "progress_interval", type=click.FloatRange(0), default=30.0,
              show_default=True, envvar="EXPLAINKIT_PROGRESS_INTERVAL",
              help="Seconds between progress lines when stderr is not a terminal.")
@click.pass_context
def analyze(ctx: click.Context, model: str, config: str | None, data: str | None, **opts) -> int:
    """Run analyzers on MODEL over a probe set; write report.json and report.html."""
    config_file = ctx.meta.get("explainkit.config_file", {})
    specs = merge_analyzer_specs(opts.pop("analyzers"), config_file)
    layer = opts.pop("layer")
    if not data:
        raise click.UsageError("--data is required (or set 'data' in the config file)")
    handle = load_handle(model, opts)
    probe = load_probe(data, opts)
    resolved = parameter_sources(ctx, {"model": model, "data": data, "config": config, "layer": layer,
                                       **{k: v for k, v in opts.items() if k not in ("progress", "progress_interval")}})
    resolved["analyzers"] = {"value": [[n, p] for n, p in specs] if specs else "defaults",
                             "source": "command line" if ctx.params.get("analyzers") else
                             ("config file" if specs else "default")}
    report = run_analyze(
        handle, probe, specs, out=opts["out"], device=opts["device"], batch_size=opts["batch_size"],
        seed=opts["seed"], progress=opts["progress"], config=resolved, layer=layer,
        asset_budget_bytes=int(opts["asset_budget_mb"] * 1024 * 1024),
        backend=opts["backend"], backend_options=backend_settings(opts, resolved),
        cache=opts["cache_dir"] or opts["cache"], params=config_file.get("analyzer"),
        time_budget=opts["time_budget"], progress_interval=opts["progress_interval"], autocast=opts["autocast"],
        task=opts["task"],
    )
    if opts["backend"] == "torchrun" and os.environ.get("RANK", "0") != "0":
        return ExitCode.OK  # rank 0 reports
    if opts["fmt"] == "json":
        doc = report.to_dict()
        doc["assets"] = {}
        click.echo(json.dumps(doc, indent=1, allow_nan=False))
    else:
        print_summary(report, Path(opts["out"]))
    failing = _SEVERITY[opts["fail_on"]]
    return ExitCode.FINDINGS if any(f["severity"] in failing for f in report.findings) else ExitCode.OK


COMMANDS = [analyze]
