"""The analyzer registry: ``register_analyzer``, ``get_analyzer``, ``list_analyzers``.

Built-in and third-party analyzers are found the same way, on the first read of the registry: the
built-ins from the one table :data:`BUILTIN_ANALYZERS` (``name -> "module:Class"``), third-party
ones from the entry-point group ``explainkit.analyzers`` (``name = "package.module:Class"``; set
``EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them). :func:`register_analyzer` adds a class
from the running process. Nothing here imports a method family: the table names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from explainkit.analyzers.base import Analyzer
from explainkit.errors import ConfigError
from explainkit.registry import Registry
from explainkit.report.html import register_section_template

__all__ = ["ANALYZERS", "BUILTIN_ANALYZERS", "get_analyzer", "get_analyzer_class", "list_analyzers",
           "register_analyzer"]

#: The built-in analyzers, in the order they register.
BUILTIN_ANALYZERS = {
    "captum": "explainkit.cam.analyzer:CaptumAttributions",
    "dissect": "explainkit.dissect.analyzer:NetworkDissection",
    "discovery": "explainkit.discovery.analyzer:Discovery",
    "gradcam": "explainkit.cam.analyzer:GradCam",
    "information": "explainkit.information.analyzer:FactorAnalysis",
    "invert": "explainkit.invert.analyzer:Invert",
    "multilabel": "explainkit.tasks.analyzer:MultiLabelQuality",
    "performance": "explainkit.analyzers.performance:Performance",
    "prototype_regions": "explainkit.prototypes.analyzer:PrototypeRegions",
    "prototypes": "explainkit.prototypes.analyzer:Prototypes",
    "reliability": "explainkit.reliability.analyzer:LabelReliability",
    "segmentation": "explainkit.tasks.analyzer:SegmentationQuality",
    "tcav": "explainkit.tcav.analyzer:Tcav",
}


def _check(name: str, cls: object) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise ValueError(f"analyzer name {name!r} must be lowercase snake case")
    if not (isinstance(cls, type) and issubclass(cls, Analyzer)):
        raise TypeError(f"{cls!r} is not an Analyzer subclass")
    if cls.name != name:
        raise ValueError(f"analyzer class {cls.__qualname__} is named {cls.name!r}, not {name!r}")


def _added(name: str, cls: type[Analyzer]) -> None:
    source = getattr(cls, "template_source", None)
    if source:
        register_section_template(name, source)


#: Every analyzer: the built-ins, entry-point plugins and classes registered in this process.
ANALYZERS: Registry[type[Analyzer]] = Registry("analyzer", builtins=BUILTIN_ANALYZERS, group="explainkit.analyzers",
                                               check=_check, on_register=_added)


def register_analyzer(cls: type[Analyzer] | None = None, *, name: str | None = None) -> Callable | type[Analyzer]:
    """Class decorator adding an analyzer to the registry; duplicate names raise.

    Parameters
    ----------
    cls : type, optional
        The analyzer class (when used without parentheses).
    name : str, optional
        Registry name; defaults to ``cls.name`` (which it must equal).

    Returns
    -------
    type or callable
        The class, unchanged (or a decorator).
    """

    def add(klass: type[Analyzer]) -> type[Analyzer]:
        return ANALYZERS.register(name or getattr(klass, "name", ""), klass)

    return add(cls) if cls is not None else add


def list_analyzers(pattern: str = "*") -> list[str]:
    """Registered analyzer names matching the fnmatch ``pattern``, sorted."""
    return sorted(ANALYZERS.names(pattern))


def get_analyzer_class(name: str) -> type[Analyzer]:
    """The class registered as ``name``."""
    return ANALYZERS.get(name)


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
        Unknown name or parameter.
    """
    cls = get_analyzer_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameter for analyzer {name!r}: {exc}") from None
