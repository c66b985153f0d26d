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

from explainkit.config import load_config
from explainkit.errors import ConfigError
from explainkit.loading import ModelHandle, load_model
from explainkit.loading.arch import ArchSpec, parse_untrusted_arch

__all__ = ["config_option", "load_handle", "loading_options", "parameter_sources", "preprocessing_options"]

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


def load_handle(model: str, opts: dict[str, Any]) -> ModelHandle:
    """Load MODEL with the loading (and, when present, preprocessing) options of a command."""
    prep = {k: opts[k] for k in ("input_size", "mean", "std", "resize") if k in opts}
    return load_model(model, arch=opts.get("arch"), trust=opts.get("trust", False),
                      allow_classes=opts.get("allow_classes", ()), class_names=opts.get("class_names"),
                      output_key=opts.get("output_key"), **prep)


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
