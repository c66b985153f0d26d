"""Options shared by several commands, and the config-file plumbing (CLI > env > file > defaults)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from explainkit.config import load_config

__all__ = ["config_option", "loading_options", "parameter_sources", "preprocessing_options"]


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
