"""Helpers shared by the model adapters: finding the layer a paper describes, class names of weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["contains", "find_module", "has_tensors", "identity_classes"]


def has_tensors(module: nn.Module, *names: str, dims: tuple[int, ...] | None = None) -> bool:
    """Whether ``module`` has tensor attributes (parameters or buffers) called ``names`` (of ``dims`` dims)."""
    values = [getattr(module, n, None) for n in names]
    return all(isinstance(v, torch.Tensor) and (dims is None or v.dim() in dims) for v in values)


def find_module(root: nn.Module, predicate: Callable[[nn.Module], bool], what: str) -> tuple[str, nn.Module]:
    """The first submodule (``root`` included, in ``named_modules`` order) satisfying ``predicate``.

    Raises
    ------
    ConfigError
        None does (``what`` names the expected layer in the message).
    """
    for name, module in root.named_modules():
        if predicate(module):
            return name, module
    raise ConfigError(f"{type(root).__name__} has no {what}")


def identity_classes(module: nn.Module, root: nn.Module) -> list[int] | None:
    """Prototype classes from a (P, K) ``prototype_class_identity`` on ``module`` or ``root``."""
    identity = getattr(module, "prototype_class_identity", getattr(root, "prototype_class_identity", None))
    if isinstance(identity, torch.Tensor) and identity.dim() == 2:
        return identity.argmax(dim=1).tolist()
    return None


def contains(predicate: Callable[[nn.Module], bool]) -> Callable[[nn.Module], bool]:
    """A detector: whether a model has a submodule (itself included) satisfying ``predicate``."""
    return lambda root: any(predicate(m) for m in root.modules())
