"""The analyzer registry: ``register_analyzer``, ``get_analyzer``, ``list_analyzers``.

Built-in analyzers register on import of :mod:`explainkit.analyzers`. Third-party analyzers are
found through the entry-point group ``explainkit.analyzers`` the first time the registry is read
(set ``EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import logging
import os
from collections.abc import Callable

from explainkit.analyzers.base import Analyzer
from explainkit.analyzers.coerce import coerce_params
from explainkit.errors import ConfigError

__all__ = ["get_analyzer", "get_analyzer_class", "list_analyzers", "register_analyzer"]

_log = logging.getLogger(__name__)
_REGISTRY: dict[str, type[Analyzer]] = {}
_plugins_loaded = False


def register_analyzer(cls: type[Analyzer] | None = None, *, name: str | None = None) -> Callable | type[Analyzer]:
    """Class decorator adding an analyzer to the registry; duplicate names raise.

    Parameters
    ----------
    cls : type, optional
        The analyzer class (when used without parentheses).
    name : str, optional
        Registry name; defaults to ``cls.name``.

    Returns
    -------
    type or callable
        The class, unchanged (or a decorator).
    """

    def add(klass: type[Analyzer]) -> type[Analyzer]:
        key = name or klass.name
        if not key or key != key.lower() or not key.replace("_", "").isalnum():
            raise ValueError(f"analyzer name {key!r} must be lowercase snake case")
        if not (isinstance(klass, type) and issubclass(klass, Analyzer)):
            raise TypeError(f"{klass!r} is not an Analyzer subclass")
        if key in _REGISTRY and _REGISTRY[key] is not klass:
            raise ValueError(f"an analyzer named {key!r} is already registered ({_REGISTRY[key].__module__})")
        _REGISTRY[key] = klass
        return klass

    return add(cls) if cls is not None else add


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    if os.environ.get("EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD"):
        return
    for ep in importlib.metadata.entry_points(group="explainkit.analyzers"):
        try:
            cls = ep.load()
            if ep.name not in _REGISTRY:
                register_analyzer(cls, name=ep.name)
        except Exception as exc:
            _log.warning("could not load analyzer plugin %s: %s", ep.name, exc)


def list_analyzers(pattern: str = "*") -> list[str]:
    """Registered analyzer names matching the fnmatch ``pattern``, sorted."""
    _load_plugins()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_analyzer_class(name: str) -> type[Analyzer]:
    """The class registered as ``name``."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown analyzer {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def get_analyzer(name: str, **params: object) -> Analyzer:
    """Instantiate analyzer ``name`` with ``params``.

    Parameters
    ----------
    name : str
        Registry name.
    **params
        Constructor parameters.

    Returns
    -------
    Analyzer
        The analyzer.

    Raises
    ------
    ConfigError
        Unknown name or parameter, or a value of the wrong type (:func:`~explainkit.analyzers.coerce.coerce_params`;
        a single value given for a list parameter is a one-element list).
    """
    cls = get_analyzer_class(name)
    params = coerce_params(cls, name, params)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameter for analyzer {name!r}: {exc}") from None
