"""The registry of prototype adapter kinds: ``register_adapter_kind``, ``get_adapter_kind``, ``list_adapter_kinds``.

An adapter kind says how the ``prototypes`` analyzer reads prototypes from a model: a builder that
makes a bound :class:`~explainkit.prototypes.adapters.PrototypeAdapter` from an
:class:`AdapterRequest`, and optionally a detector for ``adapter="auto"`` (the detecting kind with
the highest priority wins). The built-in kinds are one table (:data:`BUILTIN_KINDS`, imported on
the first read, like every :class:`~explainkit.registry.Registry`): the generic ones
(:mod:`explainkit.prototypes.kinds`: ``vectors``, ``channels``, ``exemplars``, ``kmeans``) and one
per prototype model (:mod:`explainkit.prototypes.model_adapters`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from explainkit.analyzers.base import RunContext
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.options import Option, check_values
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.registry import Registry

__all__ = ["ADAPTER_KINDS", "BUILTIN_KINDS", "AdapterKind", "AdapterRequest", "detect_adapter_kind",
           "get_adapter_kind", "list_adapter_kinds", "register_adapter_kind"]

#: The built-in kinds: name → ``"module:attribute"`` of their :class:`AdapterKind`.
BUILTIN_KINDS = {
    "vectors": "explainkit.prototypes.kinds:VECTORS",
    "channels": "explainkit.prototypes.kinds:CHANNELS",
    "exemplars": "explainkit.prototypes.kinds:EXEMPLARS",
    "kmeans": "explainkit.prototypes.kinds:KMEANS",
    "case_based": "explainkit.prototypes.model_adapters.casebased:KIND",
    "st_protopnet": "explainkit.prototypes.model_adapters.stprotopnet:KIND",
    "tversky": "explainkit.prototypes.model_adapters.tversky:KIND",
    "hopfield": "explainkit.prototypes.model_adapters.hopfield:KIND",
    "cbc": "explainkit.prototypes.model_adapters.cbc:KIND",
    "prob_psenn": "explainkit.prototypes.model_adapters.probpsenn:KIND",
    "scaleprotoseg": "explainkit.prototypes.model_adapters.scaleprotoseg:KIND",
}


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
        """The analyzer's ``model_options`` as given (builders read them with :meth:`AdapterKind.resolve_options`)."""
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
    options : mapping of str to Option
        The ``model_options`` keys the kind understands, each declared with its type, range,
        default and help (like a gate kind's policy keys).
    """

    name: str
    build: Callable[[AdapterRequest], PrototypeAdapter]
    summary: str
    reference: str = ""
    detect: Callable[[nn.Module], bool] | None = None
    priority: int = 0
    options: Mapping[str, Option] = field(default_factory=dict)

    def resolve_options(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """The kind's ``model_options``: ``values`` checked against the declarations, defaults filled in.

        Raises
        ------
        ConfigError
            An unknown key, or a value of the wrong type or out of range (one message for all).
        """
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ConfigError(f"prototypes: adapter kind {self.name!r} has no model_options {unknown}; known: {known}")
        check_values(f"prototypes: model_options of {self.name!r}", self.options, values)
        return {k: self.options[k].parse(values[k], k) if k in values else opt.default
                for k, opt in self.options.items()}


def _check(name: str, kind: object) -> None:
    if not isinstance(kind, AdapterKind):
        raise TypeError(f"{kind!r} is not an AdapterKind")
    if name != kind.name or name == "auto" or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"adapter kind {kind.name!r} must be registered under its own lowercase snake-case name, "
                         "not 'auto'")


#: The prototype adapter kinds.
ADAPTER_KINDS: Registry[AdapterKind] = Registry("prototype adapter", builtins=BUILTIN_KINDS, check=_check)


def register_adapter_kind(kind: AdapterKind) -> AdapterKind:
    """Add ``kind`` under its name (clashes with a registered kind raise :class:`ValueError`); returns it."""
    return ADAPTER_KINDS.register(kind.name, kind)


def list_adapter_kinds() -> list[str]:
    """Registered kind names, sorted."""
    return sorted(ADAPTER_KINDS.names())


def get_adapter_kind(name: str) -> AdapterKind:
    """The kind registered as ``name`` (:class:`~explainkit.errors.ConfigError` for an unknown one)."""
    return ADAPTER_KINDS.get(name)


def detect_adapter_kind(module: nn.Module) -> str:
    """The kind ``adapter="auto"`` picks for ``module``: the detecting kind of highest priority.

    Raises
    ------
    ConfigError
        No kind detects the module (cannot happen with the built-in ``channels`` fallback).
    """
    for _, kind in sorted(ADAPTER_KINDS.items(), key=lambda item: (-item[1].priority, item[0])):
        if kind.detect is not None and kind.detect(module):
            return kind.name
    raise ConfigError(f"no prototype adapter recognises {type(module).__name__}; name one with adapter=")
