"""The registry of prototype adapter kinds: ``register_adapter_kind``, ``get_adapter_kind``, ``list_adapter_kinds``.

An adapter kind says how the ``prototypes`` analyzer reads prototypes from a model: a builder that
makes a bound :class:`~explainkit.prototypes.adapters.PrototypeAdapter` from an
:class:`AdapterRequest`, and optionally a detector for ``adapter="auto"`` (the detecting kind with
the highest priority wins). The built-in kinds are registered from one explicit list on first use:
the generic ones (:mod:`explainkit.prototypes.kinds`: ``vectors``, ``channels``, ``exemplars``,
``kmeans``) and one per prototype model (:mod:`explainkit.prototypes.model_adapters`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from explainkit.analyzers.base import RunContext
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter

__all__ = ["AdapterKind", "AdapterRequest", "detect_adapter_kind", "get_adapter_kind", "list_adapter_kinds",
           "register_adapter_kind"]

#: Modules whose import registers the built-in kinds.
BUILTIN_MODULES = (
    "explainkit.prototypes.kinds",
    "explainkit.prototypes.model_adapters.casebased",
    "explainkit.prototypes.model_adapters.stprotopnet",
    "explainkit.prototypes.model_adapters.tversky",
    "explainkit.prototypes.model_adapters.hopfield",
    "explainkit.prototypes.model_adapters.cbc",
    "explainkit.prototypes.model_adapters.probpsenn",
)

_REGISTRY: dict[str, AdapterKind] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class AdapterRequest:
    """Everything a builder may use.

    Attributes
    ----------
    ctx : RunContext
        The run (handle, probe data, device, rng).
    layer : str or None
        The latent layer asked for (the analyzer's ``layer``, else the run's ``--layer``).
    options : mapping
        The analyzer's parameters (``prototype_tensor``, ``similarity``, ``channels``, ...,
        ``model_options``).
    is_train : callable
        Probe index → whether it is in the analyzer's seeded "train" split.
    model_label : callable
        Probe index → the model's class index of the image.
    """

    ctx: RunContext
    layer: str | None
    options: Mapping[str, Any]
    is_train: Callable[[int], bool]
    model_label: Callable[[int], int]

    @property
    def handle(self) -> ModelHandle:
        """The model handle."""
        return self.ctx.handle

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) model input size."""
        return tuple(self.ctx.handle.require_preprocessing().input_size)

    @property
    def model_options(self) -> dict[str, Any]:
        """The analyzer's ``model_options`` (options of the model-specific adapters)."""
        return dict(self.options.get("model_options") or {})


@dataclass(frozen=True)
class AdapterKind:
    """A way of reading prototypes from a model.

    Attributes
    ----------
    name : str
        Registry name (the analyzer's ``adapter`` value).
    build : callable
        :class:`AdapterRequest` → bound adapter.
    summary : str
        One line for docs and ``--help``.
    reference : str
        The paper the adapter follows.
    detect : callable, optional
        Module → whether ``adapter="auto"`` should pick this kind.
    priority : int
        Order of detection (higher first).
    options : mapping of str to str
        ``model_options`` keys the kind understands, with help.
    """

    name: str
    build: Callable[[AdapterRequest], PrototypeAdapter]
    summary: str
    reference: str = ""
    detect: Callable[[nn.Module], bool] | None = None
    priority: int = 0
    options: Mapping[str, str] = field(default_factory=dict)


def register_adapter_kind(kind: AdapterKind) -> AdapterKind:
    """Add ``kind`` to the registry (duplicate names raise); returns it."""
    if not kind.name or not kind.name.replace("_", "").isalnum() or kind.name != kind.name.lower():
        raise ValueError(f"adapter kind name {kind.name!r} must be lowercase snake case")
    if kind.name == "auto" or (kind.name in _REGISTRY and _REGISTRY[kind.name] is not kind):
        raise ValueError(f"an adapter kind named {kind.name!r} is already registered")
    _REGISTRY[kind.name] = kind
    return kind


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def list_adapter_kinds() -> list[str]:
    """Registered kind names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_adapter_kind(name: str) -> AdapterKind:
    """The kind registered as ``name``."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown prototype adapter {name!r}; choose auto or one of "
                          f"{', '.join(sorted(_REGISTRY))}") from None


def detect_adapter_kind(module: nn.Module) -> str:
    """The kind ``adapter="auto"`` picks for ``module``: the detecting kind of highest priority.

    Raises
    ------
    ConfigError
        No kind detects the module (cannot happen with the built-in ``channels`` fallback).
    """
    _load_builtins()
    for kind in sorted(_REGISTRY.values(), key=lambda k: (-k.priority, k.name)):
        if kind.detect is not None and kind.detect(module):
            return kind.name
    raise ConfigError(f"no prototype adapter recognises {type(module).__name__}; name one with adapter=")
