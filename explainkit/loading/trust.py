"""Trust tiers for pickle-based checkpoints (``torch.save`` zip and legacy files).

=================  ===========================================================================
Tier               What loads, and how
=================  ===========================================================================
``weights-only``   tensors and containers only (plus a curated set of data-only classes:
                   ``argparse.Namespace`` and NumPy scalars/dtypes, as timm allows); loaded with
                   ``torch.load(weights_only=True)``, always passed explicitly.
``allow-classes``  full-module pickles whose every global is a ``torch.nn.Module`` subclass from
                   ``torch.nn`` or from a module the user named (``--allow-classes``); still
                   ``weights_only=True`` inside ``torch.serialization.safe_globals``.
``trusted``        anything else, with ``torch.load(weights_only=False)``; only with ``--trust``.
=================  ===========================================================================

There is never an automatic fallback from one tier to a less safe one.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from explainkit.errors import ConfigError, ModelRefusedError
from explainkit.loading.pickle_scan import INSTANTIATED, uses_in_torch_file

__all__ = ["PickleLoad", "load_pickle_checkpoint"]

_MIN_TORCH_FOR_UNTRUSTED = (2, 10)


def _curated_data_classes() -> list[object]:
    import numpy as np

    classes: list[object] = [argparse.Namespace, np.dtype]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    classes.append(scalar)
    classes.extend(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))
    return classes


def _qualname(obj: object) -> str:
    return f"{obj.__module__}.{obj.__name__}"  # type: ignore[attr-defined]


def _default_allowed() -> set[str]:
    """Dotted names torch's weights-only unpickler accepts without any allowlisting."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except ImportError:  # pragma: no cover - private API moved; fall back to the public scanner
        allowed = set()
    allowed.update(_qualname(g) for g in torch.serialization.get_safe_globals() if hasattr(g, "__name__"))
    return allowed


@dataclass(frozen=True)
class PickleLoad:
    """What a pickle-based checkpoint turned out to be, and how it was loaded."""

    obj: object
    trust_mode: str
    globals_allowed: tuple[str, ...]


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _resolve_allowed_class(name: str, allow_modules: Sequence[str]) -> type[nn.Module] | None:
    module_name, _, attr = name.rpartition(".")
    in_nn = module_name == "torch.nn" or module_name.startswith("torch.nn.")
    in_user = any(module_name == m or module_name.startswith(m + ".") for m in allow_modules)
    if not (in_nn or in_user):
        return None
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        return obj
    return None


def load_pickle_checkpoint(
    path: str | Path, *, legacy: bool, trust: bool, allow_classes: Sequence[str] = ()
) -> PickleLoad:
    """Load a ``torch.save`` file under the strictest tier that can read it.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    legacy : bool
        True for the pre-zip serialization format.
    trust : bool
        Whether the user passed ``--trust`` (allows ``weights_only=False``).
    allow_classes : sequence of str
        Module names whose ``nn.Module`` subclasses may appear in a full-module pickle.

    Returns
    -------
    PickleLoad
        The loaded object and the tier used.

    Raises
    ------
    ModelRefusedError
        The file needs a tier the user did not grant; the message names the offending globals.
    """
    path = Path(path)
    for module in allow_classes:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(f"--allow-classes expects dotted module names, got {module!r}")
    try:
        found = uses_in_torch_file(path, legacy=legacy)
    except Exception as exc:
        raise ModelRefusedError(f"model file {path} is corrupt: cannot parse its pickle ({exc})") from None
    curated = _curated_data_classes()
    curated_names = {_qualname(c) for c in curated}
    unsafe = sorted(set(found) - _default_allowed() - curated_names)

    if unsafe and not trust and _torch_version() < _MIN_TORCH_FOR_UNTRUSTED:
        raise ModelRefusedError(
            f"torch {torch.__version__} has known flaws in its weights-only unpickler; "
            "upgrade to torch >= 2.10 or pass --trust for a file you trust"
        )
    if not unsafe:
        return PickleLoad(_torch_load(path, curated, weights_only=True), "weights-only", ())

    classes = {name: _resolve_allowed_class(name, allow_classes) for name in unsafe}
    offending = [name for name, cls in classes.items() if cls is None]
    if not offending:
        allowed = [cls for cls in classes.values() if cls is not None]
        return PickleLoad(
            _torch_load(path, curated + allowed, weights_only=True), "allow-classes", tuple(unsafe)
        )
    if trust:
        return PickleLoad(_torch_load(path, [], weights_only=False), "trusted", tuple(unsafe))
    user_modules = _suggestible_modules(offending, found)
    hint = (
        f"if you trust the code of {', '.join(user_modules)}, pass --allow-classes "
        f"{','.join(user_modules)}; "
        if user_modules
        else ""
    )
    raise ModelRefusedError(
        f"refusing {path}: unpickling it would import {', '.join(offending)}; {hint}"
        "pass --trust only for a file you trust (no automatic unsafe fallback is performed)"
    )


def _suggestible_modules(offending: Sequence[str], uses: Mapping[str, frozenset[str]]) -> list[str]:
    """Modules worth naming in ``--allow-classes``.

    Those of globals the pickle only instantiates as classes (``NEWOBJ``, how ``torch.save`` stores
    an ``nn.Module``) and never calls, and that are neither the standard library (``posix``,
    ``builtins``, ...) nor torch itself.
    """
    out = set()
    for name in offending:
        module = name.rpartition(".")[0]
        top = module.partition(".")[0]
        if uses.get(name) == frozenset({INSTANTIATED}) and top not in sys.stdlib_module_names and top != "torch":
            out.add(module)
    return sorted(out)


def _torch_load(path: Path, safe: list[object], *, weights_only: bool) -> object:
    try:
        if weights_only:
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelRefusedError(f"cannot load {path}: {first}") from None
    except Exception as exc:  # pickle.UnpicklingError and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelRefusedError(f"refusing {path}: {first}") from None
