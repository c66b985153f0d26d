"""One registry type for every kind of plugin: analyzers, CAM methods, gate kinds and backends.

A :class:`Registry` maps names to plugins (classes or method records). Plugins enter it three ways,
all through :meth:`Registry.register`:

* **built-ins**: one explicit table ``name -> "module:attribute"`` given to the registry, imported
  on the first read (the package never imports its plugins for their side effects, so nothing
  depends on import order);
* **entry points** (optional): the distribution metadata group named by ``group``, read after the
  built-ins, the same way (``name = "package.module:Class"``); a plugin that fails to load is
  logged and skipped, and set ``EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them all;
* **in process**: a decorator such as :func:`explainkit.register_analyzer` calling
  :meth:`Registry.register`.

Each kind keeps its familiar functions (``get_analyzer``, ``list_methods``, ``register_backend``
...) as thin wrappers over its registry.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from explainkit.errors import ConfigError

__all__ = ["AUTOLOAD_ENV", "Registry"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

#: Environment variable that turns off loading entry-point plugins.
AUTOLOAD_ENV = "EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD"


def _load_object(spec: str) -> object:
    """Import ``"package.module:attribute"`` and return the attribute.

    Parameters
    ----------
    spec : str
        Module path and attribute, separated by a colon.

    Returns
    -------
    object
        The attribute.
    """
    module, _, attr = spec.partition(":")
    obj: object = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named plugins of one kind.

    Parameters
    ----------
    kind : str
        What the plugins are, for messages (``"analyzer"``, ``"CAM method"``).
    builtins : mapping of str to str, optional
        The built-in plugins: name → ``"module:attribute"``, registered in this order on the first read.
    group : str, optional
        Entry-point group of third-party plugins (read after the built-ins).
    normalize : callable, optional
        Applied to a requested name before the lookup (e.g. lower-casing).
    check : callable, optional
        ``check(name, obj)`` raises :class:`ValueError` / :class:`TypeError` for an object that
        cannot be registered under ``name``.
    on_register : callable, optional
        ``on_register(name, obj)`` after a plugin was added.
    """

    def __init__(self, kind: str, *, builtins: Mapping[str, str] | None = None, group: str | None = None,
                 normalize: Callable[[str], str] | None = None,
                 check: Callable[[str, T], None] | None = None,
                 on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self.builtins = dict(builtins or {})
        self.group = group
        #: Other spellings → registered name (looked up after ``normalize``).
        self.aliases: dict[str, str] = {}
        self._normalize = normalize
        self._check = check
        self._on_register = on_register
        self._items: dict[str, T] = {}
        self._loaded = False

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Register the built-ins, then the entry-point plugins (once; later calls do nothing)."""
        if self._loaded:
            return
        self._loaded = True
        for name, spec in self.builtins.items():
            self._add(name, _load_object(spec))  # type: ignore[arg-type]
        if self.group and not os.environ.get(AUTOLOAD_ENV):
            for ep in importlib.metadata.entry_points(group=self.group):
                if ep.name in self._items:
                    continue
                try:
                    self._add(ep.name, ep.load())
                except Exception as exc:
                    _log.warning("could not load %s plugin %s: %s", self.kind, ep.name, exc)

    # -- writing --------------------------------------------------------------------------------
    def register(self, name: str, obj: T, aliases: Sequence[str] = ()) -> T:
        """Add ``obj`` as ``name`` (after loading the built-ins, so that clashes with them raise).

        ``aliases`` are other spellings that :meth:`get` accepts (e.g. ``"grad-cam++"``).

        Raises
        ------
        ValueError
            ``name`` is taken by another object, or ``check`` refuses it.
        TypeError
            ``check`` refuses the object's type.
        """
        self.load()
        taken = [a for a in aliases if self.aliases.get(a, name) != name or a in self._items]
        if taken:
            raise ValueError(f"{self.kind} alias(es) {', '.join(taken)} already taken")
        self._add(name, obj)
        self.aliases.update(dict.fromkeys(aliases, name))
        return obj

    def _add(self, name: str, obj: T) -> T:
        if self._check is not None:
            self._check(name, obj)
        if name in self._items and self._items[name] is not obj:
            where = getattr(self._items[name], "__module__", "")
            raise ValueError(f"a {self.kind} named {name!r} is already registered" + (f" ({where})" if where else ""))
        self._items[name] = obj
        if self._on_register is not None:
            self._on_register(name, obj)
        return obj

    # -- reading --------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The plugin registered as ``name`` (or an alias of it).

        Raises
        ------
        ConfigError
            Unknown name; the message lists the available ones.
        """
        self.load()
        key = self._normalize(name) if self._normalize is not None else name
        try:
            return self._items[self.aliases.get(key, key)]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self._items)}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the fnmatch ``pattern``, in registration order."""
        self.load()
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def items(self) -> list[tuple[str, T]]:
        """``(name, plugin)`` pairs in registration order."""
        self.load()
        return list(self._items.items())
