"""Declarative policy keys: how each value is read and checked, with one-line errors."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explainkit.errors import ConfigError

__all__ = ["REQUIRED", "Option"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Marks an option without a default.
REQUIRED: Any = _Required()

_TYPES = ("str", "int", "float", "bool", "choice", "file", "dir", "class", "date")


@dataclass(frozen=True)
class Option:
    """One key of a policy table.

    Attributes
    ----------
    type : str
        ``str``, ``int``, ``float``, ``bool``, ``choice``, ``file`` / ``dir`` (paths relative to the
        policy file, which must exist), ``class`` (a class name or a non-negative index) or ``date``.
    default : Any
        Value when the key is absent; :data:`REQUIRED` makes the key mandatory.
    choices : tuple of str
        Allowed values of a ``choice``.
    low, high : float, optional
        Bounds of an ``int`` / ``float``; ``low_open`` / ``high_open`` exclude them.
    help : str
        One line for the documentation.
    """

    type: str
    default: Any = None
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"unknown option type {self.type!r}")

    @property
    def required(self) -> bool:
        """Whether the key must be given."""
        return self.default is REQUIRED

    def parse(self, value: Any, key: str, base_dir: Path) -> Any:
        """Check ``value`` and return it in its parsed form.

        Parameters
        ----------
        value : Any
            The TOML value.
        key : str
            The key (for messages).
        base_dir : Path
            Folder that relative paths are resolved against (the policy file's folder).

        Returns
        -------
        Any
            The value (paths become absolute :class:`~pathlib.Path` objects, dates ``datetime.date``).

        Raises
        ------
        ConfigError
            A one-line message naming the key (the caller prefixes the file and line).
        """
        parse = getattr(self, f"_parse_{self.type}")
        return parse(value, key, base_dir)

    def _parse_str(self, value: Any, key: str, _base: Path) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be a non-empty string, not {value!r}")
        return value

    def _parse_bool(self, value: Any, key: str, _base: Path) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value

    def _parse_choice(self, value: Any, key: str, _base: Path) -> str:
        if value not in self.choices:
            raise ConfigError(f"{key} must be one of {', '.join(repr(c) for c in self.choices)}, not {value!r}")
        return value

    def _bounds(self, value: float, key: str) -> None:
        bad_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        bad_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if bad_low or bad_high:
            lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
            hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
            raise ConfigError(f"{key} must be {' and '.join(p for p in (lo, hi) if p)}, not {value!r}")

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
