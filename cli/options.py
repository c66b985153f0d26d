"""Options shared by several commands, and the config-file plumbing (CLI > env > file > defaults).

Values given on the command line are trusted to choose code (``--arch pkg.mod:factory``,
``--trust``, ``--allow-classes``); values from the environment or a config file are not: an
architecture from there goes through :func:`explainkit.loading.arch.parse_untrusted_arch`, and
``--allow-classes`` is refused from there (``--trust`` has no variable and no config key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from explainkit.adapters.input_kind import refuse_image_preprocessing
from explainkit.backends import list_backends
from explainkit.config import load_config
from explainkit.data.open import Probe, open_probe
from explainkit.errors import ConfigError
from explainkit.loading import ModelHandle, load_model
from explainkit.loading.arch import ArchSpec, parse_untrusted_arch

__all__ = ["backend_options", "backend_settings", "config_option", "data_options", "load_handle", "load_probe",
           "loading_options", "output_options", "parameter_sources", "preprocessing_options"]

_RENAMED = {"format": "fmt"}  # config keys are option names; a few options use another parameter name


def _load_config_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        config, origins = load_config(value)
        ctx.meta["explainkit.config_file"] = config
        ctx.meta["explainkit.config_origins"] = {_RENAMED.get(k, k): v for k, v in origins.items()}
        defaults = {_RENAMED.get(k, k): v for k, v in config.items() if k != "analyzer"}
        for key in ("mean", "std", "input_size"):
            if isinstance(defaults.get(key), list):
                defaults[key] = ",".join(str(v) for v in defaults[key])
        params = {p.name: p for p in ctx.command.params}
        for key, value in defaults.items():  # a value of the wrong type names the file and key
            if key in params:
                try:
                    params[key].type_cast_value(ctx, value)
                except click.BadParameter as exc:
                    raise ConfigError(f"{ctx.meta['explainkit.config_origins'][key]}: {exc.message}") from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _untrusted_origin(ctx: click.Context, param: click.Parameter) -> str | None:
    """Where an option's value came from, when that is not the command line.

    The config file's ``"file.toml line N: 'key'"`` or ``"environment variable NAME"``; ``None``
    for the command line and defaults.
    """
    source = ctx.get_parameter_source(param.name)
    if source is ParameterSource.ENVIRONMENT:
        return f"environment variable {param.envvar}"
    if source is ParameterSource.DEFAULT_MAP:
        return ctx.meta.get("explainkit.config_origins", {}).get(param.name, "the config file")
    return None


def _arch_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    origin = _untrusted_origin(ctx, param)
    return parse_untrusted_arch(value, origin) if value and origin else value


def _allow_classes_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    origin = _untrusted_origin(ctx, param)
    if value and origin:
        raise ConfigError(f"{origin}: modules for --allow-classes choose code to import; they are only accepted "
                          "on the command line")
    return tuple(p.strip() for v in value for p in str(v).split(",") if p.strip())


def _output_key(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | int | None:
    return int(value) if value is not None and value.strip().lstrip("-").isdigit() else value


def config_option(f: Callable) -> Callable:
    """``--config FILE.toml``: values become defaults that the environment and the CLI override."""
    return click.option(
        "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=True,
        callback=_load_config_callback, envvar="EXPLAINKIT_CONFIG",
        help="TOML file with the same keys as the options (and [analyzer.NAME] tables).",
    )(f)


def loading_options(f: Callable) -> Callable:
    """``--arch``, ``--trust``, ``--allow-classes``, ``--class-names``, ``--output-key``."""
    for opt in reversed([
        click.option("--arch", envvar="EXPLAINKIT_ARCH", metavar="SPEC", callback=_arch_callback,
                     help="Architecture for weight files: torchvision:NAME, timm:NAME, explainkit:NAME or "
                          "package.module:factory, optionally with (key=value, ...). From EXPLAINKIT_ARCH or a "
                          "config file only torchvision/timm/explainkit names with size and count arguments."),
        click.option("--trust", is_flag=True, default=False,
                     help="Allow formats that run code when loaded (TorchScript, torch.export, "
                          "weights_only=False pickles). Only for files you trust."),
        click.option("--allow-classes", "allow_classes", multiple=True, metavar="MODULE",
                     envvar="EXPLAINKIT_ALLOW_CLASSES", callback=_allow_classes_callback,
                     help="Module whose nn.Module classes a full-module pickle may use (repeatable, "
                          "or comma-separated; command line only)."),
        click.option("--class-names", "class_names", metavar="FILE", envvar="EXPLAINKIT_CLASS_NAMES",
                     help="Class names, one per line (.txt) or a JSON list (.json)."),
        click.option("--output-key", "output_key", metavar="KEY|INDEX", envvar="EXPLAINKIT_OUTPUT_KEY",
                     callback=_output_key,
                     help="Dict key or tuple index of the logits when the model returns several outputs "
                          "(default: the tensor, the first tensor of a tuple, or logits/out/output/scores)."),
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
        click.option("--data", envvar="EXPLAINKIT_DATA", metavar="DIR",
                     help="Probe folder: images, or .npy / .nii volumes for a volume (Conv3d) model."),
        click.option("--concepts", envvar="EXPLAINKIT_CONCEPTS", metavar="FILE",
                     help="Concept table (concepts.csv or an N×C .npy); default DATA/concepts.csv."),
        click.option("--descriptions", envvar="EXPLAINKIT_DESCRIPTIONS", metavar="FILE",
                     help="INVERT-style concept description JSON; default DATA/descriptions.json."),
        click.option("--skip-bad", "skip_bad", is_flag=True, default=False,
                     help="Drop bad data rows (counted in the report) instead of failing."),
        click.option("--follow-symlinks", "follow_symlinks", is_flag=True, default=False,
                     help="Read probe files that are symlinks pointing outside the probe folder (refused by default)."),
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
                         help="Progress on stderr (default: a bar on a terminal, else one line per phase "
                              "at intervals)."),
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
    """Load MODEL with the loading (and, when present, preprocessing) options of a command."""
    prep = {k: opts[k] for k in ("input_size", "mean", "std", "resize") if k in opts}
    return load_model(model, arch=opts.get("arch"), trust=opts.get("trust", False),
                      allow_classes=opts.get("allow_classes", ()), class_names=opts.get("class_names"),
                      output_key=opts.get("output_key"), **prep)


def load_probe(data: str | None, opts: dict[str, Any]) -> Probe:
    """The probe images or volumes, from ``--data`` and the data options (``--data`` is required)."""
    if not data:
        raise click.UsageError("--data is required (or set 'data' in the config file)")
    probe = open_probe(data, concepts=opts["concepts"], descriptions=opts["descriptions"],
                       skip_bad=opts["skip_bad"], follow_symlinks=opts["follow_symlinks"])
    if probe.kind == "volumes":
        refuse_image_preprocessing([k for k in ("input_size", "mean", "std", "resize") if opts.get(k)])
    return probe


def parameter_sources(ctx: click.Context, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Resolved value and source (command line, environment, config file, default) per option."""
    names = {
        ParameterSource.COMMANDLINE: "command line",
        ParameterSource.ENVIRONMENT: "environment",
        ParameterSource.DEFAULT_MAP: "config file",
        ParameterSource.DEFAULT: "default",
    }
    out = {}
    for key, value in params.items():
        source = ctx.get_parameter_source(key)
        value = str(value) if isinstance(value, ArchSpec) else value
        out[key] = {"value": list(value) if isinstance(value, tuple) else value,
                    "source": names.get(source, "default") if source else "default"}
    return out
