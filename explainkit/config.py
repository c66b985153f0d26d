"""Configuration files (TOML) and analyzer specs from the command line.

Precedence, per key: command line > environment (``EXPLAINKIT_<KEY>``) > config file > defaults.
The resolved configuration, with the source of each value, is recorded in every report.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from explainkit.analyzers.registry import get_analyzer_class
from explainkit.errors import ConfigError

__all__ = ["ANALYZE_KEYS", "COMMAND_LINE_ONLY", "load_config", "parse_analyzer_spec", "parse_duration", "parse_value"]

#: Keys allowed at the top level of an ``analyze`` config file (same names as the CLI options).
ANALYZE_KEYS = frozenset({
    "data", "concepts", "descriptions", "arch", "analyzers", "layer", "out", "device", "batch_size",
    "seed", "input_size", "mean", "std", "resize", "class_names", "output_key", "format",
    "skip_bad", "follow_symlinks", "fail_on", "asset_budget_mb", "backend", "workers", "gpus_per_worker",
    "time_budget", "autocast",
})
#: Options that choose code to run: only ever accepted on the command line, never from a file.
COMMAND_LINE_ONLY = {"trust": "--trust", "allow_classes": "--allow-classes"}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")
_TABLES = frozenset({"analyzer"})


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*(\[+[ \t]*)?{re.escape(key)}\b", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def load_config(path: str | Path, allowed: frozenset[str] = ANALYZE_KEYS) -> tuple[dict[str, Any], dict[str, str]]:
    """Read and validate a TOML config file, and say where each key is.

    Parameters
    ----------
    path : str or Path
        The file.
    allowed : frozenset of str
        Top-level keys accepted (besides the ``[analyzer.NAME]`` tables).

    Returns
    -------
    data : dict
        The parsed configuration.
    origins : dict of str to str
        Key → ``"file.toml line N: 'key'"``, for messages about a value that came from the file.

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown key (the message names the key and line), or a
        key that chooses code (``trust``, ``allow_classes``: only ever given on the command line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path.name}: invalid TOML: {exc}") from None
    origins = {}
    for key, value in data.items():
        line = _line_of(text, key)
        where = f"{path.name}{f' line {line}' if line else ''}"
        origins[key] = f"{where}: {key!r}"
        if key in COMMAND_LINE_ONLY:
            raise ConfigError(f"{where}: {key!r} cannot be set in a config file; pass {COMMAND_LINE_ONLY[key]} on the "
                              "command line")
        if key in _TABLES:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"{where}: [analyzer.NAME] tables expected")
            continue
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    return data, origins


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1h30m"``, ``"1.5h"`` (a number is seconds).

    Raises
    ------
    ConfigError
        Not a positive duration.
    """
    if isinstance(value, bool):
        raise ConfigError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        match = _DURATION.fullmatch(text)
        if not text or not match or not any(match.groups()):
            raise ConfigError(f"bad duration {value!r}: expected e.g. 90s, 10m, 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"bad duration {value!r}: must be positive")
    return seconds


def parse_value(text: str) -> Any:
    """Parse a command-line parameter value: bool, int, float, ``a|b`` lists, else the string."""
    text = text.strip()
    if "|" in text:
        return [parse_value(t) for t in text.split("|") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_analyzer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``NAME[:key=value,key=value]`` (lists as ``a|b|c``), each value by its declared type.

    A parameter the analyzer declares is read by :meth:`~explainkit.options.Option.from_text` (so a
    list parameter given one value is a one-element list); other keys by :func:`parse_value` (the
    analyzer then rejects them by name).

    Parameters
    ----------
    spec : str
        E.g. ``gradcam:methods=gradcam|layercam,batch_size=8``.

    Returns
    -------
    tuple
        ``(name, params)``.

    Raises
    ------
    ConfigError
        Malformed text, an unknown analyzer, or a value that is not of the declared type.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"bad analyzer {spec!r}: expected NAME[:key=value,...]")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[a-z_][a-z0-9_]*", key.strip()):
            raise ConfigError(f"bad analyzer parameter {item!r} in {spec!r}: expected key=value")
        params[key.strip()] = value
    options = get_analyzer_class(name).options
    try:
        return name, {k: options[k].from_text(v, k) if k in options else parse_value(v) for k, v in params.items()}
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def merge_analyzer_specs(
    cli_specs: Sequence[str], config: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]] | None:
    """Combine ``--analyzer`` options with the config's ``analyzers`` list and ``[analyzer.*]`` tables.

    Returns ``None`` when neither names analyzers (the runner then picks its defaults).
    """
    tables = {k: dict(v) for k, v in (config.get("analyzer") or {}).items()}
    if cli_specs:
        parsed = [parse_analyzer_spec(s) for s in cli_specs]
    elif config.get("analyzers"):
        names = config["analyzers"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError("config key 'analyzers' must be a list of names")
        parsed = [parse_analyzer_spec(n) for n in names]
    else:
        return None
    return [(name, {**tables.get(name, {}), **params}) for name, params in parsed]
