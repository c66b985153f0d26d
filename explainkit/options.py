"""Declared options: every plugin states its parameters once, and they are checked before anything runs.

One :class:`Option` describes one parameter: its type, its range or choices, its default and one
line of help. Every kind of plugin declares a mapping ``name -> Option``:

* analyzers and backends: the class attribute ``options`` (defaults come from ``__init__``);
* CAM methods: ``register_method(..., options=...)`` (defaults from the keyword-only parameters);
* gate kinds: the class attribute ``options`` (the policy keys, with their defaults).

The same declaration validates values from Python, from a TOML table and from the command line
(:meth:`Option.from_text` reads ``k=v`` text by the declared type), and prints the reference
(``explainkit analyzers --params NAME``).

Examples
--------
>>> opts = {"steps": Option("int", 8, low=1, help="deletion / insertion steps"),
...         "methods": Option("choice", ("gradcam",), choices=("gradcam", "layercam"), many=True)}
>>> check_values("toy", opts, {"steps": 0, "methods": ["gradcam", "x"]})
Traceback (most recent call last):
...
explainkit.errors.ConfigError: toy: steps must be >= 1, not 0; methods[1] must be one of 'gradcam', 'layercam', not 'x'
>>> opts["methods"].from_text("gradcam", "methods")
['gradcam']
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from explainkit.errors import ConfigError

__all__ = ["REQUIRED", "TYPES", "UNSET", "Option", "bind_options", "check_values", "describe_options"]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Marks an option without a default (the key must be given).
REQUIRED: Any = _Marker("REQUIRED")
#: Marks an option whose default is read from the function signature (:func:`bind_options`).
UNSET: Any = _Marker("UNSET")

#: The option types.
TYPES = ("str", "int", "float", "bool", "choice", "file", "dir", "class", "date", "mapping")
_NOUNS = {"str": "a non-empty string", "int": "an integer", "float": "a finite number", "bool": "true or false",
          "file": "a file path", "dir": "a folder path", "class": "a class name or index",
          "date": "a date like 2027-01-31", "mapping": "a table"}


@dataclass(frozen=True)
class Option:
    """One declared parameter (or policy key).

    Attributes
    ----------
    type : str
        ``str`` (non-empty), ``int``, ``float`` (finite), ``bool``, ``choice`` (one of ``choices``),
        ``file`` / ``dir`` (an existing path, relative to a base folder), ``class`` (a class name or a
        non-negative index), ``date`` or ``mapping`` (a table with string keys; ``choices``, when
        given, lists the allowed keys; the values are the plugin's to check).
    default : Any
        The value when none is given. :data:`REQUIRED`: the value must be given. :data:`UNSET`
        (the default): taken from the plugin's signature by :func:`bind_options`. A default of
        ``None`` means that ``None`` ("not set") is an allowed value.
    choices : tuple or callable
        Allowed values of a ``choice`` (or keys of a ``mapping``); a callable returning them is
        evaluated when needed (e.g. the names of a registry).
    low, high : float, optional
        Bounds of an ``int`` / ``float``; ``low_open`` / ``high_open`` exclude them.
    many : int
        0: one value; 1 (or ``True``): a list of such values; 2: a list of lists.
    or_one : bool
        With ``many``: a single value is accepted in place of a list (and the command line keeps a
        single value as it is instead of making a one-element list).
    help : str
        One line for ``explainkit analyzers --params`` and the documentation.
    """

    type: str
    default: Any = UNSET
    choices: tuple[Any, ...] | Callable[[], Sequence[Any]] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    many: int = 0
    or_one: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown option type {self.type!r}")
        if int(self.many) not in (0, 1, 2):
            raise ValueError("many must be 0, 1 or 2")

    # -- description ----------------------------------------------------------------------------
    @property
    def required(self) -> bool:
        """Whether the key must be given."""
        return self.default is REQUIRED

    def allowed_choices(self) -> tuple[Any, ...]:
        """The choices (calling ``choices`` when it is a function)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def _bounds_text(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p)

    def describe(self) -> str:
        """What values are allowed, in words (``an integer >= 1``, ``a list, each value one of 'a', 'b'``)."""
        if self.type == "choice":
            item = f"one of {', '.join(repr(c) for c in self.allowed_choices())}"
        else:
            item = " ".join(p for p in (_NOUNS[self.type], self._bounds_text()) if p)
            if self.type == "mapping" and self.choices:
                item = f"{item} with keys from {', '.join(repr(c) for c in self.allowed_choices())}"
        many = int(self.many)
        if many:
            listed = f"{'a list of lists' if many == 2 else 'a list'}, each value {item}"
            item = f"{item}, or {listed}" if self.or_one else listed
        return f"{item}, or none" if self.default is None else item

    # -- checking -------------------------------------------------------------------------------
    def parse(self, value: Any, key: str, base_dir: Path | None = None) -> Any:
        """Check ``value`` and return it in its parsed form.

        Parameters
        ----------
        value : Any
            The value (Python, or parsed from TOML).
        key : str
            The key (for messages).
        base_dir : Path, optional
            Folder that relative ``file`` / ``dir`` paths are resolved against (default: the
            working directory).

        Returns
        -------
        Any
            The value (paths become absolute :class:`~pathlib.Path` objects, dates ``datetime.date``,
            tuples lists).

        Raises
        ------
        ConfigError
            A one-line message naming the key, the value and what is allowed.
        """
        if value is None and self.default is None:
            return None
        return self._parse_nested(value, key, Path.cwd() if base_dir is None else base_dir, int(self.many))

    def _parse_nested(self, value: Any, key: str, base: Path, depth: int) -> Any:
        if depth == 0:
            return getattr(self, f"_parse_{self.type}")(value, key, base)
        if isinstance(value, list | tuple):
            return [self._parse_nested(v, f"{key}[{i}]", base, depth - 1) for i, v in enumerate(value)]
        if self.or_one and depth == int(self.many):
            return self._parse_nested(value, key, base, 0)
        raise ConfigError(f"{key} must be {self.describe().removesuffix(', or none')}, not {value!r}")

    def _parse_str(self, value: Any, key: str, _base: Path) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be a non-empty string, not {value!r}")
        return value

    def _parse_bool(self, value: Any, key: str, _base: Path) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value

    def _parse_choice(self, value: Any, key: str, _base: Path) -> Any:
        choices = self.allowed_choices()
        if isinstance(value, list | dict) or value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value

    def _bounds(self, value: float, key: str) -> None:
        bad_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        bad_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if bad_low or bad_high:
            raise ConfigError(f"{key} must be {self._bounds_text()}, not {value!r}")

    def _parse_int(self, value: Any, key: str, _base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        self._bounds(value, key)
        return value

    def _parse_float(self, value: Any, key: str, _base: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, not {value!r}")
        self._bounds(float(value), key)
        return float(value)

    def _parse_path(self, value: Any, key: str, base: Path, want_dir: bool) -> Path:
        text = self._parse_str(value, key, base)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else (base / path)
        if want_dir and not path.is_dir():
            raise ConfigError(f"{key}: folder {text!r} not found (paths are relative to the policy file's "
                              f"folder {base})")
        if not want_dir and not path.is_file():
            raise ConfigError(f"{key}: file {text!r} not found (paths are relative to the policy file's "
                              f"folder {base})")
        return path

    def _parse_file(self, value: Any, key: str, base: Path) -> Path:
        return self._parse_path(value, key, base, want_dir=False)

    def _parse_dir(self, value: Any, key: str, base: Path) -> Path:
        return self._parse_path(value, key, base, want_dir=True)

    def _parse_class(self, value: Any, key: str, base: Path) -> str | int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(f"{key} must be a class name or a non-negative index, not {value!r}")
            return value
        return self._parse_str(value, key, base)

    def _parse_date(self, value: Any, key: str, _base: Path) -> dt.date:
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a date like 2027-01-31, not {value!r}")

    def _parse_mapping(self, value: Any, key: str, _base: Path) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} must be a table with string keys, not {value!r}")
        if self.choices:
            allowed = self.allowed_choices()
            unknown = [k for k in value if k not in allowed]
            if unknown:
                raise ConfigError(f"{key} has unknown key(s) {', '.join(map(repr, unknown))} "
                                  f"(allowed: {', '.join(map(str, allowed))})")
        return dict(value)

    # -- command-line text ----------------------------------------------------------------------
    def from_text(self, text: str, key: str) -> Any:
        """Read a command-line value (``k=v``) by the declared type.

        Lists are written ``a|b|c``; with ``many`` a single ``a`` is the list ``["a"]`` (unless
        ``or_one``). ``none`` / ``null`` is ``None`` for options whose default is ``None``.
        Nested lists and tables cannot be written on the command line (use a config file).

        Raises
        ------
        ConfigError
            Text that is not of the declared type (the value's range is checked later, with the
            other parameters).
        """
        text = text.strip()
        if self.default is None and text.lower() in ("none", "null"):
            return None
        if self.type == "mapping" or int(self.many) > 1:
            raise ConfigError(f"{key} cannot be given on the command line; set it in a [analyzer.NAME] table "
                              "of a --config file")
        if self.many and not (self.or_one and "|" not in text):
            return [self._scalar_from_text(t.strip(), f"{key}[{i}]")
                    for i, t in enumerate(p for p in text.split("|") if p.strip())]
        return self._scalar_from_text(text, key)

    def _scalar_from_text(self, text: str, key: str) -> Any:
        kind = self.type
        if kind == "choice":
            kinds = {type(c) for c in self.allowed_choices()}
            kind = "int" if kinds == {int} else "float" if kinds <= {int, float} and kinds else "str"
        try:
            if kind == "int" or (kind == "class" and text.isdigit()):
                return int(text)
            if kind == "float":
                return float(text)
        except ValueError:
            raise ConfigError(f"{key} must be {'an integer' if kind == 'int' else 'a number'}, "
                              f"not {text!r}") from None
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ConfigError(f"{key} must be true or false, not {text!r}")
            return text.lower() == "true"
        return text


def bind_options(options: Mapping[str, Option], fn: Callable[..., Any], owner: str, *,
                 keyword_only: bool = False) -> dict[str, Option]:
    """Complete a plugin's declaration from the signature of ``fn``: the defaults come from there.

    Parameters
    ----------
    options : mapping of str to Option
        The declaration.
    fn : callable
        ``__init__`` of an analyzer or backend, or the function of a CAM method.
    owner : str
        The plugin, for messages.
    keyword_only : bool
        Only keyword-only parameters are options (CAM methods: ``fn(layer, run, *, ...)``).

    Returns
    -------
    dict of str to Option
        The options in signature order, each with its default.

    Raises
    ------
    TypeError
        A parameter without a declaration or without a default, a declared option that is not a
        parameter, or a declared default that differs from the signature's.
    """
    sig = inspect.signature(fn)
    wanted = (inspect.Parameter.KEYWORD_ONLY,) if keyword_only else (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {k: p for k, p in sig.parameters.items() if k != "self" and p.kind in wanted}
    undeclared = [k for k in params if k not in options]
    unknown = [k for k in options if k not in params]
    if undeclared or unknown:
        parts = ([f"parameter(s) {', '.join(undeclared)} not declared in its options"] if undeclared else []) + \
                ([f"option(s) {', '.join(unknown)} are not parameters"] if unknown else [])
        raise TypeError(f"{owner}: {'; '.join(parts)}")
    out = {}
    for key, p in params.items():
        opt = options[key]
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{owner}: parameter {key} needs a default")
        if opt.default is not UNSET and opt.default != p.default:
            raise TypeError(f"{owner}: option {key} declares default {opt.default!r}, the signature {p.default!r}")
        out[key] = replace(opt, default=p.default)
    return out


def check_values(owner: str, options: Mapping[str, Option], values: Mapping[str, Any]) -> None:
    """Check every value against its declaration; all bad values are reported, one message each.

    Parameters
    ----------
    owner : str
        Prefix of the message (the plugin's name).
    options : mapping of str to Option
        The declaration.
    values : mapping
        Parameter values (keys without a declaration are not checked here).

    Raises
    ------
    ConfigError
        ``"owner: a must be >= 1, not 0; b must be one of 'x', 'y', not 'z'"``.
    """
    problems = []
    for key, value in values.items():
        if key in options:
            try:
                options[key].parse(value, key)
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError(f"{owner}: {'; '.join(problems)}")


def describe_options(options: Mapping[str, Option]) -> list[dict[str, Any]]:
    """One row per option: ``name``, ``type`` (allowed values in words), ``default`` and ``help``."""
    return [{"name": key, "type": opt.describe(),
             "default": None if opt.default in (REQUIRED, UNSET) else opt.default,
             "required": opt.required, "help": opt.help} for key, opt in options.items()]
