"""Resolve layers by dotted name and pick a sensible default layer per architecture."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch
from torch import nn

from explainkit.adapters.layout import FIRST, layout_candidates, module_evidence
from explainkit.errors import ConfigError, RuntimeAnalysisError
from explainkit.hooks import ENTRY_SEP, capture_layers, eval_mode, split_entry

__all__ = ["default_layer", "resolve_layer", "resolve_layers"]

_INDEX = re.compile(r"\[(-?\d+)\]")


def _split(name: str) -> list[str]:
    name = _INDEX.sub(r".\1", name.strip())
    for prefix in ("model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return [p for p in name.split(".") if p]


def resolve_layer(root: nn.Module, name: str) -> tuple[str, nn.Module]:
    """Find a submodule by dotted name; ``[-1]`` / ``.-1`` index into containers; ``:key`` picks an output entry.

    Parameters
    ----------
    root : torch.nn.Module
        The model.
    name : str
        ``layer4``, ``layer4.1.conv2``, ``layer4[-1]``, ``blocks.-1.norm1`` ... For a layer whose
        forward returns a mapping, a tuple / list or a namedtuple, ``NAME:KEY`` names one entry of
        its output (``backbone:out``, ``lstm:0``, ``head:hidden``); :func:`explainkit.hooks.capture_layers`
        records that entry and passes the rest of the output on unchanged.

    Returns
    -------
    canonical : str
        The dotted ``named_modules()`` name of the layer (followed by ``:KEY`` when one was given).
    module : torch.nn.Module
        The layer.

    Raises
    ------
    ConfigError
        No such layer; the message lists the closest names.
    """
    name, key = split_entry(name)
    if key is not None:
        if not key.strip():
            raise ConfigError(f"layer {name + ENTRY_SEP!r}: name the output entry after {ENTRY_SEP!r}")
        canonical, module = resolve_layer(root, name)
        return f"{canonical}{ENTRY_SEP}{key.strip()}", module
    names = {id(m): n for n, m in root.named_modules() if n}
    if name in {n for n in names.values()}:
        return name, root.get_submodule(name)
    node = root
    for part in _split(name):
        children = dict(node.named_children())
        if part in children:
            node = children[part]
        elif re.fullmatch(r"-?\d+", part) and children:
            items = list(children.values())
            idx = int(part)
            if not -len(items) <= idx < len(items):
                node = None
                break
            node = items[idx]
        else:
            node = None
            break
    if node is None or node is root or id(node) not in names:
        close = difflib.get_close_matches(name, list(names.values()), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; list them with `explainkit layers MODEL`"
        raise ConfigError(f"no layer named {name!r} in {type(root).__name__}{hint}")
    return names[id(node)], node


def resolve_layers(root: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Resolve several names; returns canonical name → module, in the given order."""
    out: dict[str, nn.Module] = {}
    for name in names:
        canonical, module = resolve_layer(root, name)
        out[canonical] = module
    return out


def _known_family_layer(root: nn.Module) -> str | None:
    cls = type(root).__name__
    try:
        if hasattr(root, "blocks") and ("VisionTransformer" in cls or cls.startswith(("Deit", "Eva"))):
            return resolve_layer(root, "blocks.-1.norm1")[0]
        if cls == "VisionTransformer" and hasattr(root, "encoder"):
            return resolve_layer(root, "encoder.layers.-1.ln_1")[0]
        if cls == "SwinTransformer" and hasattr(root, "layers"):
            return resolve_layer(root, "layers.-1.blocks.-1.norm1")[0]
        if cls == "SwinTransformer" and hasattr(root, "features"):
            return resolve_layer(root, "features.-1.-1.norm1")[0]
    except ConfigError:
        return None
    return None


def default_layer(root: nn.Module, input_size: tuple[int, ...] = (224, 224), channels: int = 3) -> str:
    """The layer explanations use when none is given: the last spatial layer.

    Known families get the layer the literature uses (ViT: the last block's ``norm1``; Swin: the
    last block's ``norm1``). Otherwise a dry forward pass on a zero image finds the last module
    (in completion order) whose output is a map of the input's rank (4-D for images, 5-D for
    volumes) larger than 1×1 in height and width (pooling layers excluded), or else a token sequence.

    Parameters
    ----------
    root : torch.nn.Module
        The model.
    input_size : tuple of int
        ``(H, W)`` (or ``(D, H, W)`` for volume models) for the dry run.
    channels : int
        Input channels of the dry run's zero input.

    Returns
    -------
    str
        Dotted layer name.

    Raises
    ------
    ConfigError
        No spatial layer was found.
    RuntimeAnalysisError
        The model raised on the dry run.
    """
    known = _known_family_layer(root)
    if known is not None:
        return known
    modules = {n: m for n, m in root.named_modules() if n}
    device = next((p.device for p in root.parameters()), torch.device("cpu"))
    x = torch.zeros(1, channels, *input_size, device=device)
    with eval_mode(root), torch.no_grad(), capture_layers(
        root, modules, detach=True, transform=lambda t: torch.empty(t.shape, device="meta"),
        tensors_only=False,
    ) as cap:
        _probe(root, x)
    shapes = {name: outs[-1].shape for name, outs in cap.outputs.items() if outs}
    # Pooling layers resample the map (VGG's adaptive 7x7 pool upsamples small inputs); skip them.
    for name in reversed(cap.order):
        if _is_spatial_map(shapes[name], modules[name], input_size) and "Pool" not in type(modules[name]).__name__:
            return name
    for name in reversed(cap.order):
        shape = shapes[name]
        if len(shape) == 3 and shape[1] >= 4:
            return name
    raise ConfigError(f"no spatial layer found in {type(root).__name__}; pass --layer NAME")


def _is_spatial_map(shape: torch.Size, module: nn.Module, input_size: tuple[int, ...]) -> bool:
    """A map of the input's rank, over 1×1 in height and width in every layout the evidence allows."""
    if len(shape) != len(input_size) + 2:
        return False
    by_module = module_evidence(module, shape)
    kinds = {by_module} if by_module else (layout_candidates(shape, input_size) or {"nchw", "nhwc"})
    return all(min((shape[2:] if k == FIRST else shape[1:-1])[-2:]) > 1 for k in kinds)


def _probe(root: nn.Module, x: torch.Tensor) -> None:
    try:
        root(x)
    except ConfigError:
        raise
    except Exception as exc:
        raise RuntimeAnalysisError(
            f"the model failed on a {tuple(x.shape)} zero input while looking for a default layer ({exc}); "
            "pass --layer NAME to skip that search"
        ) from None
