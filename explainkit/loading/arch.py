"""Build an architecture from a spec string, and load a state dict into it strictly.

Specs
-----
``torchvision:resnet18``
    ``torchvision.models.get_model(name, weights=None, **kwargs)``.
``timm:vit_tiny_patch16_224``
    ``timm.create_model(name, pretrained=False, **kwargs)`` (needs the ``timm`` extra).
``package.module:factory``
    ``importlib.import_module(package.module).factory(**kwargs)``.
``explainkit:factory``
    Short for ``explainkit.models:factory`` (explainkit's own reference models, e.g.
    ``explainkit:tversky_net(num_classes=3)``).

Keyword arguments follow in parentheses as Python literals, e.g.
``torchvision:resnet18(num_classes=10)``.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["ArchSpec", "build_arch", "load_state_dict_strict", "parse_arch", "strip_prefixes"]

_SPEC = re.compile(r"^\s*(?P<source>[A-Za-z_][\w.]*)\s*:\s*(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<kw>.*)\))?\s*$")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class ArchSpec:
    """A parsed ``--arch`` value."""

    source: str
    name: str
    kwargs: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.source}:{self.name}" + (f"({kw})" if kw else "")

    @property
    def is_builtin_family(self) -> bool:
        """True for torchvision, timm and explainkit's own models (safe to take from file metadata)."""
        return self.source in {"torchvision", "timm", "explainkit", "explainkit.models"}


def parse_arch(spec: str) -> ArchSpec:
    """Parse ``source:name(key=literal, ...)``.

    Parameters
    ----------
    spec : str
        The architecture spec.

    Returns
    -------
    ArchSpec
        The parsed spec.

    Raises
    ------
    ConfigError
        The spec is malformed.
    """
    match = _SPEC.match(spec or "")
    if not match:
        raise ConfigError(
            f"bad --arch {spec!r}: expected torchvision:NAME, timm:NAME or package.module:factory, "
            "optionally followed by (key=value, ...)"
        )
    kwargs: dict[str, object] = {}
    if match["kw"] and match["kw"].strip():
        try:
            call = ast.parse(f"f({match['kw']})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        except (SyntaxError, ValueError, AssertionError):
            raise ConfigError(f"bad --arch {spec!r}: arguments must be key=literal pairs") from None
    return ArchSpec(match["source"], match["name"], kwargs)


def build_arch(spec: ArchSpec) -> nn.Module:
    """Instantiate the architecture named by ``spec`` with random weights.

    Parameters
    ----------
    spec : ArchSpec
        The parsed spec.

    Returns
    -------
    torch.nn.Module
        The untrained model.

    Raises
    ------
    ConfigError
        Unknown source, name or arguments, or a missing optional dependency.
    """
    try:
        if spec.source == "torchvision":
            import torchvision

            if spec.name not in torchvision.models.list_models():
                raise ConfigError(f"unknown torchvision architecture {spec.name!r}")
            return torchvision.models.get_model(spec.name, weights=None, **spec.kwargs)
        if spec.source == "timm":
            try:
                import timm
            except ImportError:
                raise ConfigError("--arch timm:... needs timm: pip install 'explainkit[timm]'") from None
            if not timm.is_model(spec.name):
                raise ConfigError(f"unknown timm architecture {spec.name!r}")
            return timm.create_model(spec.name, pretrained=False, **spec.kwargs)
        try:
            module = importlib.import_module("explainkit.models" if spec.source == "explainkit" else spec.source)
        except ImportError as exc:
            raise ConfigError(f"--arch {spec}: cannot import {spec.source!r} ({exc})") from None
        factory = getattr(module, spec.name, None)
        if not callable(factory):
            raise ConfigError(f"--arch {spec}: {spec.source} has no callable {spec.name!r}")
        model = factory(**spec.kwargs)
    except TypeError as exc:
        raise ConfigError(f"--arch {spec}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--arch {spec}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) key prefixes.

    Parameters
    ----------
    state : mapping of str to Tensor
        A state dict.

    Returns
    -------
    state : dict
        The cleaned state dict.
    stripped : list of str
        The prefixes that were removed (for the load report).
    """
    stripped: list[str] = []
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped.append(prefix)
                changed = True
    return out, stripped


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], spec: str) -> None:
    """Load ``state`` into ``model`` with ``strict=True`` and a readable error.

    Parameters
    ----------
    model : torch.nn.Module
        The freshly built architecture.
    state : mapping of str to Tensor
        Weights, prefixes already stripped.
    spec : str
        The architecture spec, for the message.

    Raises
    ------
    ConfigError
        Missing or unexpected keys, or shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
            if "num_classes" not in spec:
                parts.append("if the classifier size differs, pass it: --arch 'NAME(num_classes=K)'")
        raise ConfigError(f"weights do not match --arch {spec}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
