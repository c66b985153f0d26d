"""Options shared by several commands, and the config-file plumbing (CLI > env > file > defaults)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from explainkit.backends import list_backends
from explainkit.config import load_config
from explainkit.data.probe import ProbeSet
from explainkit.loading import ModelHandle, load_model

__all__ = ["backend_options", "backend_settings", "config_option", "data_options", "load_handle", "load_probe",
           "loading_options", "output_options", "parameter_sources", "preprocessing_options"]


def _load_config_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        config = load_config(value)
        ctx.meta["explainkit.config_file"] = config
        renamed = {"format": "fmt"}  # config keys are option names; a few options use another parameter name
        defaults = {renamed.get(k, k): v for k, v in config.items() if k != "analyzer"}
        for key in ("mean", "std", "input_size"):
            if isinstance(defaults.get(key), list):
                defaults[key] = ",".join(str(v) for v in defaults[key])
        if isinstance(defaults.get("allow_classes"), list):
            defaults["allow_classes"] = tuple(defaults["allow_classes"])
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(f: Callable) -> Callable:
    """``--config FILE.toml``: values become defaults that the environment and the CLI override."""
    return click.option(
        "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=True,
        callback=_load_config_callback, envvar="EXPLAINKIT_CONFIG",
        help="TOML file with the same keys as the options (and [analyzer.NAME] tables).",
    )(f)


def loading_options(f: Callable) -> Callable:
    """``--arch``, ``--trust``, ``--allow-classes``, ``--class-names``."""
    for opt in reversed([
        click.option("--arch", envvar="EXPLAINKIT_ARCH", metavar="SPEC",
                     help="Architecture for weight files: torchvision:NAME, timm:NAME or package.module:factory, "
                          "optionally with (key=value, ...)."),
        click.option("--trust", is_flag=True, default=False,
                     help="Allow formats that run code when loaded (TorchScript, torch.export, "
                          "weights_only=False pickles). Only for files you trust."),
        click.option("--allow-classes", "allow_classes", multiple=True, metavar="MODULE",
                     envvar="EXPLAINKIT_ALLOW_CLASSES",
                     help="Module whose nn.Module classes a full-module pickle may use (repeatable, "
                          "or comma-separated)."),
        click.option("--class-names", "class_names", metavar="FILE", envvar="EXPLAINKIT_CLASS_NAMES",
                     help="Class names, one per line (.txt) or a JSON list (.json)."),
    ]):
        f = opt(f)
    return f


def preprocessing_options(f: Callable) -> Callable:
    """``--input-size``, ``--mean``, ``--std``, ``--resize``."""
    for opt in reversed([
        click.option("--input-size", "input_size", metavar="N|H,W", envvar="EXPLAINKIT_INPUT_SIZE",
                     help="Model input size."),
        click.option("--mean", metavar="R,G,B", envvar="EXPLAINKIT_MEAN", help="Normalisation mean (0-1 RGB)."),
        click.option("--std", metavar="R,G,B", envvar="EXPLAINKIT_STD", help="Normalisation std."),
        click.option("--resize", type=click.Choice(["center_crop", "stretch"]), envvar="EXPLAINKIT_RESIZE",
                     help="How images reach the input size (default center_crop)."),
    ]):
        f = opt(f)
    return f


def _stack(f: Callable, options: list[Callable]) -> Callable:
    for opt in reversed(options):
        f = opt(f)
    return f


def data_options(f: Callable) -> Callable:
    """``--data``, ``--concepts``, ``--descriptions``, ``--skip-bad``: the probe set."""
    return _stack(f, [
        click.option("--data", envvar="EXPLAINKIT_DATA", metavar="DIR", help="Probe image folder."),
        click.option("--concepts", envvar="EXPLAINKIT_CONCEPTS", metavar="FILE",
                     help="Concept table (concepts.csv or an N×C .npy); default DATA/concepts.csv."),
        click.option("--descriptions", envvar="EXPLAINKIT_DESCRIPTIONS", metavar="FILE",
                     help="INVERT-style concept description JSON; default DATA/descriptions.json."),
        click.option("--skip-bad", "skip_bad", is_flag=True, default=False,
                     help="Drop bad data rows (counted in the report) instead of failing."),
    ])


def output_options(default_out: str) -> Callable[[Callable], Callable]:
    """``--out``, ``--device``, ``--batch-size``, ``--seed``, ``--format``, ``--asset-budget-mb``, ``--progress``.

    ``default_out`` is the output folder's default.
    """

    def add(f: Callable) -> Callable:
        return _stack(f, [
            click.option("--out", envvar="EXPLAINKIT_OUT", default=default_out, show_default=True, metavar="DIR",
                         help="Output folder for report.json and report.html."),
            click.option("--device", envvar="EXPLAINKIT_DEVICE", default="cpu", show_default=True),
            click.option("--batch-size", "batch_size", envvar="EXPLAINKIT_BATCH_SIZE", type=click.IntRange(1),
                         default=32, show_default=True),
            click.option("--seed", envvar="EXPLAINKIT_SEED", type=int, default=0, show_default=True),
            click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
                         envvar="EXPLAINKIT_FORMAT", help="What goes to stdout."),
            click.option("--asset-budget-mb", "asset_budget_mb", type=click.FloatRange(0.1), default=20.0,
                         show_default=True, help="Size budget for images embedded in the report."),
            click.option("--progress/--no-progress", default=None,
                         help="Progress bar on stderr (default: when a TTY)."),
        ])

    return add


def backend_options(f: Callable) -> Callable:
    """``--backend``, ``--workers``, ``--gpus-per-worker``, ``--ray-address``."""
    return _stack(f, [
        click.option("--backend", type=click.Choice(list_backends()), default="serial",
                     show_default=True, envvar="EXPLAINKIT_BACKEND",
                     help="Execution backend (torchrun: start with torchrun ... -m explainkit)."),
        click.option("--workers", type=click.IntRange(1), default=2, show_default=True, envvar="EXPLAINKIT_WORKERS",
                     help="Ray actors (--backend ray)."),
        click.option("--gpus-per-worker", "gpus_per_worker", type=click.FloatRange(0), default=0.0,
                     show_default=True, envvar="EXPLAINKIT_GPUS_PER_WORKER",
                     help="GPUs per Ray actor (--backend ray)."),
        click.option("--ray-address", "ray_address", envvar="RAY_ADDRESS", metavar="ADDR",
                     help="Join this Ray cluster ('auto', 'ray://head:10001'); default: a local Ray (--backend ray)."),
    ])


def backend_settings(opts: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """Backend options for the runner; drops the Ray-only entries from ``resolved`` under torchrun."""
    if opts["backend"] == "torchrun":
        for key in ("workers", "gpus_per_worker", "ray_address"):
            resolved.pop(key, None)
    if opts["backend"] != "ray":
        return {}
    return {"workers": opts["workers"], "gpus_per_worker": opts["gpus_per_worker"], "address": opts["ray_address"]}


def load_handle(model: str, opts: dict[str, Any]) -> ModelHandle:
    """The model, from the loading and preprocessing options."""
    return load_model(
        model, arch=opts["arch"], trust=opts["trust"], allow_classes=split_allow_classes(opts["allow_classes"]),
        class_names=opts["class_names"], input_size=opts["input_size"], mean=opts["mean"], std=opts["std"],
        resize=opts["resize"],
    )


def load_probe(data: str | None, opts: dict[str, Any]) -> ProbeSet:
    """The probe set, from ``--data`` and the data options (``--data`` is required)."""
    if not data:
        raise click.UsageError("--data is required (or set 'data' in the config file)")
    return ProbeSet.from_folder(data, concepts=opts["concepts"], descriptions=opts["descriptions"],
                                skip_bad=opts["skip_bad"])


def split_allow_classes(values: tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Flatten repeated / comma-separated ``--allow-classes`` values."""
    if not values:
        return ()
    if isinstance(values, str):
        values = (values,)
    return tuple(p.strip() for v in values for p in str(v).split(",") if p.strip())


def parameter_sources(ctx: click.Context, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Resolved value and source (command line, environment, config file, default) per option."""
    names = {
        click.core.ParameterSource.COMMANDLINE: "command line",
        click.core.ParameterSource.ENVIRONMENT: "environment",
        click.core.ParameterSource.DEFAULT_MAP: "config file",
        click.core.ParameterSource.DEFAULT: "default",
    }
    out = {}
    for key, value in params.items():
        source = ctx.get_parameter_source(key)
        out[key] = {"value": list(value) if isinstance(value, tuple) else value,
                    "source": names.get(source, "default") if source else "default"}
    return out
