"""Smaller commands: ``layers``, ``analyzers``, ``inspect``, ``report``, ``world``, ``train``, ``demo``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from explainkit.cli.options import load_handle, loading_options
from explainkit.errors import ConfigError
from explainkit.outputs import check_output_file
from explainkit.textsafe import escape, inert_lines

__all__ = ["COMMANDS"]


@click.command("layers")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@loading_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def layers(model: str, fmt: str, **opts) -> int:
    """List MODEL's layers (dotted names usable with --layer)."""
    handle = load_handle(model, opts)
    rows = [(name, type(m).__name__) for name, m in handle.module.named_modules() if name]
    if fmt == "json":
        click.echo(json.dumps([{"name": n, "type": t} for n, t in rows], indent=1))
    else:
        width = max((len(n) for n, _ in rows), default=4)
        for name, kind in rows:
            click.echo(f"{escape(name):<{width}}  {escape(kind)}")
    return 0


@click.command("analyzers")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--params", "params_of", metavar="NAME", help="Print the parameters analyzer NAME declares.")
def analyzers(fmt: str, params_of: str | None) -> int:
    """List the registered analyzers with one-line descriptions (or one analyzer's parameters)."""
    from explainkit.analyzers import get_analyzer_class, list_analyzers

    if params_of:
        return _print_params(get_analyzer_class(params_of), fmt)
    rows = []
    for name in list_analyzers():
        cls = get_analyzer_class(name)
        rows.append({"name": name, "summary": cls.summary, "requires": sorted(cls.requires),
                     "inputs": sorted(cls.inputs), "default": cls.run_by_default, "tasks": sorted(cls.tasks)})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1))
    else:
        for r in rows:
            needs = f"  [needs: {', '.join(r['requires'])}]" if r["requires"] else ""
            needs += f"  [reads: {', '.join(r['inputs'])}]" if r["inputs"] != ["images"] else ""
            tasks = f"  [tasks: {', '.join(r['tasks'])}]" if r["tasks"] != ["classification"] else ""
            click.echo(f"{r['name']:<14s} {r['summary']}{needs}{tasks}")
    return 0


def _print_params(cls: type, fmt: str) -> int:
    """The declared parameters of an analyzer class: name, allowed values, default, help."""
    from explainkit.options import describe_options

    rows = describe_options(cls.options)
    if fmt == "json":
        click.echo(json.dumps({"analyzer": cls.name, "parameters": rows}, indent=1, default=repr))
        return 0
    click.echo(f"{cls.name}: {cls.summary}")
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        click.echo(f"  {r['name']:<{width}}  {r['help']}")
        click.echo(f"  {'':<{width}}  {r['type']}; default {json.dumps(r['default'], default=repr)}")
    return 0


@click.command("inspect")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@loading_options
def inspect_model(model: str, **opts) -> int:
    """Show MODEL's format, trust tier, capabilities and preprocessing (JSON on stdout)."""
    handle = load_handle(model, opts)
    info = handle.describe()
    info["n_layers"] = len(handle.layer_names())
    info["n_parameters"] = sum(p.numel() for p in handle.module.parameters())
    click.echo(json.dumps(info, indent=1))
    return 0


@click.command("report")
@click.argument("report_json", type=click.Path(dir_okay=False, exists=True))
@click.option("--html", "html_path", type=click.Path(dir_okay=False), required=True,
              help="Where to write the HTML rendering.")
def rerender(report_json: str, html_path: str) -> int:
    """Re-render a report.json as HTML (asset URIs other than data:image/png|jpeg|webp are dropped)."""
    from explainkit._io import atomic_write_text
    from explainkit.report import Report

    check_output_file(html_path, "--html")
    atomic_write_text(html_path, Report.load(report_json).to_html())
    click.echo(escape(html_path))
    return 0


@click.command("world")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n-images", type=click.IntRange(3), default=600, show_default=True)
@click.option("--size", type=click.IntRange(16, 512), default=64, show_default=True)
@click.option("--class-factor", type=click.Choice(["shape", "colour", "texture"]), default="shape",
              show_default=True, help="The factor that decides the class.")
@click.option("--artifact", default=None, help="Plant an artifact concept with this name (e.g. stamp).")
@click.option("--artifact-class", type=int, default=0, show_default=True)
@click.option("--artifact-rate", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--artifact-other-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--artifact-kind", type=click.Choice(["stamp", "background", "cast"]), default="stamp", show_default=True,
              help="A corner stamp, a teal background tint, or an orange cast over the whole image.")
@click.option("--artifact-column/--no-artifact-column", default=True, show_default=True,
              help="Write the artifact's concept column, masks and template (off: nothing names the cue).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--task", type=click.Choice(["classification", "segmentation", "multilabel"]), default="classification",
              show_default=True, help="segmentation / multilabel: the coloured-squares world (explainkit.datasets."
                                      "multilabel) with label maps or a multi-hot labels.csv; --n-images, --size "
                                      "(a multiple of 4) and --seed apply, the class and artifact options do not.")
def world(out: str, task: str, **kwargs) -> int:
    """Write a deterministic synthetic probe world to OUT."""
    if task != "classification":
        from explainkit.datasets.multilabel import MultiLabelWorldSpec, write_probe_folder

        write_probe_folder(out, MultiLabelWorldSpec(n=kwargs["n_images"], size=kwargs["size"], seed=kwargs["seed"]),
                           task)
        click.echo(escape(out))
        return 0
    from explainkit.datasets.synthetic import WorldSpec, write_world

    spec = WorldSpec(**kwargs)
    write_world(spec, out)
    click.echo(escape(out))
    return 0


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Where to write the model (safetensors with metadata).")
@click.option("--epochs", type=click.IntRange(1), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train(data: str, out: str, epochs: int, seed: int) -> int:
    """Train the tiny demo CNN on a labelled probe folder (CPU, about a minute)."""
    from explainkit.data.probe import ProbeSet
    from explainkit.datasets.training import train_classifier
    from explainkit.loading.save import save_model
    from explainkit.models import SYNTHETIC_PREPROCESSING

    check_output_file(out, "--out")
    probe = ProbeSet.from_folder(data)
    if not probe.has_labels:
        raise ConfigError(f"{data} has no class labels to train on")

    def log(rec: dict) -> None:
        click.echo(f"epoch {rec['epoch']}: loss {rec['loss']:.3f}, train accuracy {rec['train_accuracy']:.3f}",
                   err=True)

    result = train_classifier(probe, epochs=epochs, seed=seed, on_epoch=log)
    n = len(probe.class_names or ())
    save_model(result.model, out, arch=f"explainkit:tiny_cnn(num_classes={n})",
               class_names=probe.class_names, preprocessing=SYNTHETIC_PREPROCESSING)
    click.echo(escape(out))
    return 0


@click.command("demo")
@click.option("--out", "out", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--retrain", is_flag=True, help="Train the demo model instead of using the bundled one.")
@click.option("--progress/--no-progress", default=None)
def demo(out: str, retrain: bool, progress: bool | None) -> int:
    """Build the stamped synthetic world, then write a full report on the bundled tiny model."""
    from explainkit.datasets.demo import run_demo

    paths = run_demo(Path(out), retrain=retrain, progress=progress, echo=lambda m: click.echo(inert_lines(m), err=True))
    for key, path in paths.items():
        click.echo(f"{key}: {escape(path)}")
    return 0


COMMANDS = [analyzers, demo, inspect_model, layers, rerender, train, world]
