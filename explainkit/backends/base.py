"""Execution backends behind one interface, and their registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from explainkit.analyzers.base import RunContext
from explainkit.backends.plan import Outcome, RunPlan
from explainkit.errors import ConfigError

__all__ = ["Backend", "get_backend", "list_backends", "register_backend"]

_BACKENDS: dict[str, type[Backend]] = {}


class Backend:
    """Maps a :class:`RunPlan` over the probe set and returns merged analyzer states.

    Subclasses store their options in the constructor and implement :meth:`run`. The serial backend
    is the reference: every backend must produce the states the serial one produces (up to
    floating-point summation order).
    """

    name: ClassVar[str] = ""

    def run(self, plan: RunPlan, ctx: RunContext) -> Outcome:  # pragma: no cover - abstract
        """Map every sample and merge the states."""
        raise NotImplementedError

    def output_role(self) -> tuple[str | None, bool]:
        """``(token, owner)`` of the run's staging folder (:class:`explainkit._io.StagedDir`).

        Processes that run the same analysis side by side (torchrun ranks) share the staging folder
        through a common token; only the owner swaps it in or removes it. Default: a private
        folder, owned by this process.
        """
        return None, True


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend; duplicate names raise."""
    if cls.name in _BACKENDS:
        raise ValueError(f"a backend named {cls.name!r} is already registered")
    _BACKENDS[cls.name] = cls
    return cls


def list_backends() -> list[str]:
    """Registered backend names."""
    return sorted(_BACKENDS)


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate backend ``name`` with ``options`` (:class:`ConfigError` for bad ones)."""
    cls: Callable[..., Backend] | None = _BACKENDS.get(name)
    if cls is None:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(list_backends())}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"bad option for backend {name!r}: {exc}") from None
