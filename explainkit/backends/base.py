"""Execution backends behind one interface, and their registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from explainkit.analyzers.base import RunContext
from explainkit.backends.plan import Outcome, RunPlan
from explainkit.errors import ConfigError
from explainkit.options import Option, bind_options, check_values
from explainkit.registry import Registry

__all__ = ["BACKENDS", "Backend", "get_backend", "list_backends", "register_backend"]


class Backend:
    """Maps a :class:`RunPlan` over the probe set and returns merged analyzer states.

    Subclasses store their options in the constructor, declare them in ``options`` (as analyzers
    do: :class:`~explainkit.options.Option` without a default; the default is the constructor's)
    and implement :meth:`run`. The serial backend is the reference: every backend must produce the
    states the serial one produces (up to floating-point summation order).
    """

    name: ClassVar[str] = ""
    #: The declared constructor parameters.
    options: ClassVar[Mapping[str, Option]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.options = bind_options(cls.options, cls.__init__, cls.__qualname__)

    def run(self, plan: RunPlan, ctx: RunContext) -> Outcome:  # pragma: no cover - abstract
        """Map every sample and merge the states."""
        raise NotImplementedError

    def output_role(self) -> tuple[str | None, bool]:
        """``(token, owner)`` of the run's staging folder (:class:`explainkit.outputs.StagedDir`).

        Processes that run the same analysis side by side (torchrun ranks) share the staging folder
        through a common token; only the owner swaps it in or removes it. Default: a private
        folder, owned by this process.
        """
        return None, True


def _check(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Backend)) or cls.name != name:
        raise TypeError(f"{cls!r} is not a Backend subclass named {name!r}")


#: Every backend (built-ins first, in this order).
BACKENDS: Registry[type[Backend]] = Registry("backend", check=_check, builtins={
    "serial": "explainkit.backends.serial:SerialBackend",
    "torchrun": "explainkit.backends.torchrun:TorchrunBackend",
    "ray": "explainkit.backends.ray:RayBackend",
})


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend; duplicate names raise."""
    return BACKENDS.register(cls.name, cls)


def list_backends() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(BACKENDS.names())


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate backend ``name`` with ``options``, checked against its declaration.

    Raises
    ------
    ConfigError
        Unknown backend, unknown option or a bad value (one message per bad value).
    """
    cls = BACKENDS.get(name)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ConfigError(f"bad option for backend {name!r}: {', '.join(unknown)} (takes: {', '.join(cls.options)})")
    check_values(f"backend {name!r}", cls.options, options)
    return cls(**options)
