"""Decide how a layer's output is laid out (channels first, channels last, tokens) from evidence.

A 4-D output (B, a, b, c) is either channels-first (B, C, H, W) or channels-last (B, H, W, C), and
the shape alone cannot tell when the channel count equals a spatial size (ResNet ``layer1`` at
256 x 160 gives (B, 64, 64, 40): 64 channels and 64 rows). Evidence, strongest first:

1. **the module type**: convolutions, batch/instance/group norms, pooling, upsampling → channels
   first; ``LayerNorm`` over the last axis and ``Linear`` layers → channels last; a plain
   ``nn.Sequential`` reads as its last child that is not element-wise (ReLU, GELU, Dropout ...);
2. **the input size and stride**: the spatial axes of the true layout are the input size divided by
   one common stride (up to rounding: at most 1.5 cells per axis); used when exactly one layout fits;
3. **one probe** at a second input size (the first spatial axis doubled): the axes that change are
   spatial, the channel axis does not.

When the evidence is still ambiguous (or contradictory) the decision stops with an error naming
``layout=``; it never guesses. Everything works per number of spatial axes (``rank``), so volumes
(B, C, D, H, W) are decided the same way. 3-D outputs (B, N, C) are token sequences
(:func:`explainkit.adapters.tokens.token_layout`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules import batchnorm, conv, dropout, instancenorm, padding, pooling

from explainkit.adapters.tokens import SpatialLayout, token_layout
from explainkit.errors import ConfigError

__all__ = ["FIRST", "LAST", "LAYOUTS", "infer_layout", "layout_candidates", "module_evidence"]

FIRST, LAST = "nchw", "nhwc"
#: Values of ``layout=``.
LAYOUTS = ("auto", FIRST, LAST, "tokens")

_CHANNELS_FIRST = (
    conv._ConvNd, batchnorm._BatchNorm, instancenorm._InstanceNorm, nn.GroupNorm, nn.LocalResponseNorm,
    pooling._MaxPoolNd, pooling._AvgPoolNd, pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd,
    pooling._LPPoolNd, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    dropout.Dropout1d, dropout.Dropout2d, dropout.Dropout3d, dropout.FeatureAlphaDropout,
    padding._ConstantPadNd, padding._ReflectionPadNd, padding._ReplicationPadNd,
)
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.AlphaDropout,
)


def _plain(module: nn.Module, base: type[nn.Module]) -> bool:
    """An instance of ``base`` that does not override its ``forward``."""
    return isinstance(module, base) and type(module).forward is base.forward


def module_evidence(module: nn.Module | None, shape: Sequence[int]) -> str | None:
    """``"nchw"`` / ``"nhwc"`` when the module's type fixes the layout of its ``shape`` output, else ``None``."""
    if module is None:
        return None
    if isinstance(module, _CHANNELS_FIRST):
        return FIRST
    last = int(shape[-1])
    norm = getattr(module, "normalized_shape", None)
    if (_plain(module, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and _plain(module, nn.RMSNorm))) \
            and norm is not None and len(norm) == 1 and int(norm[0]) == last:
        return LAST
    if _plain(module, nn.Linear) and module.out_features == last:
        return LAST
    if _plain(module, nn.Sequential):
        for child in reversed(list(module.children())):
            if isinstance(child, _ELEMENTWISE) or (isinstance(child, nn.PReLU) and child.num_parameters == 1):
                continue
            return module_evidence(child, shape)
    return None


def _spatial(kind: str, shape: Sequence[int]) -> list[int]:
    return list(shape[2:]) if kind == FIRST else list(shape[1:-1])


def _fits(spatial: Sequence[int], input_size: Sequence[int], slack: float = 1.5) -> bool:
    """Whether ``spatial`` is ``input_size`` divided by one common stride, up to ``slack`` cells per axis."""
    lo, hi = 0.0, float("inf")
    for out, inp in zip(spatial, input_size):
        lo = max(lo, inp / (out + slack))
        hi = min(hi, inp / (out - slack) if out > slack else float("inf"))
    return lo <= hi


def layout_candidates(shape: Sequence[int], input_size: Sequence[int] | None) -> set[str]:
    """The layouts whose spatial axes fit the input size (both when the size is unknown)."""
    rank = len(shape) - 2
    if input_size is None or len(input_size) != rank:
        return {FIRST, LAST}
    return {k for k in (FIRST, LAST) if _fits(_spatial(k, shape), input_size)}


def _probe_evidence(shape: Sequence[int], probed: Sequence[int]) -> set[str]:
    """Layouts consistent with the output shapes at the input size and at the first spatial axis doubled."""
    if len(probed) != len(shape):
        return set()
    changed = {i for i in range(1, len(shape)) if int(shape[i]) != int(probed[i])}
    found = set()
    for kind, channel in ((FIRST, 1), (LAST, len(shape) - 1)):
        spatial = set(range(2, len(shape))) if kind == FIRST else set(range(1, len(shape) - 1))
        if channel not in changed and changed and changed <= spatial:
            found.add(kind)
    if len(found) == 2:  # only axis 2 changed: it is the first spatial axis of channels-first only
        found = {k for k in found if (2 if k == FIRST else 1) in changed}
    return found


def _describe(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def infer_layout(
    output: torch.Tensor,
    module: nn.Module | None = None,
    *,
    input_size: tuple[int, ...] | None = None,
    grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    layout: str = "auto",
    probe: Callable[[], Sequence[int] | None] | None = None,
    name: str = "the layer",
) -> SpatialLayout:
    """Decide how to turn ``output`` into a (B, C, *spatial) map (see the module docstring).

    Parameters
    ----------
    output : torch.Tensor
        A layer output: (B, C, H, W), (B, H, W, C), their volume versions, or (B, N, C) tokens.
    module : torch.nn.Module, optional
        The layer (its type is evidence).
    input_size : tuple of int, optional
        Spatial size of the model input ((H, W) or (D, H, W)): stride evidence and token grids.
    grid, prefix_tokens : optional
        Known token grid and prefix-token count (from :func:`explainkit.adapters.token_hints`).
    layout : str
        ``"auto"``, or force ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
    probe : callable, optional
        Returns the layer's output shape for the model input with its first spatial axis doubled
        (``None`` when the model cannot run it); called only when needed.
    name : str
        Layer name for messages.

    Returns
    -------
    SpatialLayout
        The layout, with ``rank`` and the ``evidence`` that decided it.

    Raises
    ------
    ConfigError
        The output cannot be read as a map, or the evidence does not single out one layout.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"bad layout {layout!r}: expected {', '.join(LAYOUTS)}")
    shape = tuple(int(s) for s in output.shape)
    if output.dim() >= 4 and layout in (FIRST, LAST):
        return SpatialLayout(layout, rank=output.dim() - 2, evidence="given")
    if output.dim() == 3 and layout in ("auto", "tokens"):
        return token_layout(shape[1], input_size, grid, prefix_tokens)  # type: ignore[arg-type]
    if output.dim() < 4 or layout != "auto":
        raise ConfigError(
            f"cannot read {name}'s output of shape {_describe(shape)} as a spatial map "
            f"(expected 4-D or 5-D maps or 3-D token sequences{'' if layout == 'auto' else ' for layout=' + layout})"
        )
    rank = output.dim() - 2
    by_module = module_evidence(module, shape)
    by_size = layout_candidates(shape, input_size)
    if by_module is not None and (by_module in by_size or not by_size):
        return SpatialLayout(by_module, rank=rank, evidence=f"module {type(module).__name__}")
    if by_module is None and len(by_size) == 1:
        return SpatialLayout(by_size.pop(), rank=rank, evidence="input size and stride")
    probed = probe() if probe is not None else None
    by_probe = _probe_evidence(shape, probed) if probed is not None else set()
    if len(by_probe) == 1:
        return SpatialLayout(by_probe.pop(), rank=rank, evidence="probe at a second input size")
    why = [f"the module type ({type(module).__name__})" + (" says " + by_module if by_module else " gives none")]
    if input_size is not None:
        fit = " and ".join(sorted(by_size)) or "neither"
        why.append(f"{fit} fit{'s' if len(by_size) == 1 else ''} the input size {'x'.join(map(str, input_size))}")
    if probed is None:
        why.append("no probe at a second input size could run" if probe is not None else "no probe was possible")
    else:
        why.append(f"a probe gave {_describe(probed)}, which {'fits both' if len(by_probe) == 2 else 'fits neither'}")
    raise ConfigError(
        f"cannot tell whether {name}'s output {_describe(shape)} is channels-first or channels-last: "
        + "; ".join(why) + "; pass layout='nchw' or layout='nhwc' (analyzers gradcam, captum: layout=nchw|nhwc)"
    )
