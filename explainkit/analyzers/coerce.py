"""Check analyzer parameters against the constructor's type hints before anything runs.

Parameters reach analyzers as text (``--analyzer gradcam:methods=gradcam``) or TOML values, so a
value of the wrong type must be a usage error naming the parameter (exit code 2), not a crash in the
middle of a run (``n_resamples=lots``), and a single value given where the hint says a sequence is a
one-element list (``methods=gradcam`` is ``["gradcam"]``, never the letters of ``"gradcam"``).

Supported hints: ``int``, ``float``, ``bool``, ``str``, ``X | None``, unions, and sequences
(``Sequence[X]``, ``list[X]``, ``tuple[X, ...]``) of those; other hints accept any value.
"""

from __future__ import annotations

import collections.abc
import math
import numbers
import types
import typing
from typing import Any

from explainkit.errors import ConfigError

__all__ = ["coerce_params"]

_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits ``hint``, and the value (a scalar wrapped for a sequence)."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is typing.Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        # an exact fit first (str before Sequence[str]), then a scalar wrapped into a sequence
        for arg in sorted(args, key=lambda a: typing.get_origin(a) in _SEQUENCES):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    if origin in _SEQUENCES:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [Any]
        items = list(value) if isinstance(value, list | tuple) else [value]
        if isinstance(value, str | bytes | dict):
            items = [value]
        out = []
        for item in items:
            ok, item = _coerce(item, args[0] if len(args) == 1 or origin is not tuple else Any)
            if not ok:
                return False, value
            out.append(item)
        return True, tuple(out) if origin is tuple else out
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    return True, value  # mappings, callables, custom types: the analyzer's check() decides


def _describe(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("collections.abc.", "")
    return text.replace("<class '", "").replace("'>", "")


def coerce_params(cls: type, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the type hints of ``cls.__init__``; wrap scalars given for sequences.

    Parameters
    ----------
    cls : type
        The analyzer class.
    name : str
        Its registry name, for messages.
    params : dict
        Keyword parameters (unknown names are left for the constructor to refuse).

    Returns
    -------
    dict
        The parameters, with single values for sequence parameters made one-element lists.

    Raises
    ------
    ConfigError
        A value that fits none of the types its hint allows.
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: leave the values to the analyzer's check()
        return dict(params)
    out = {}
    for key, value in params.items():
        hint = hints.get(key, Any)
        ok, coerced = _coerce(value, hint)
        if not ok:
            raise ConfigError(f"analyzer {name!r}: parameter {key} must be {_describe(hint)}, got {value!r}")
        out[key] = coerced
    return out
