"""Turn layer outputs into (B, C, h, w) maps: channels-first, channels-last, or token grids."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["SpatialLayout", "infer_layout", "token_hints"]

_MAX_PREFIX = 16
#: How to resolve a token grid (the gradcam, captum and prototypes analyzers take both parameters).
GRID_HINT = "pass the analyzer parameters grid=H|W and prefix_tokens=N (Python: grid=(h, w), prefix_tokens=N)"


@dataclass(frozen=True)
class SpatialLayout:
    """How to read a layer output as a spatial map.

    Attributes
    ----------
    kind : str
        ``"nchw"`` (B, C, H, W), ``"nhwc"`` (B, H, W, C) or ``"tokens"`` (B, N, C).
    prefix_tokens : int
        Tokens before the patch tokens (CLS, distillation, registers); dropped.
    grid : tuple of int or None
        (h, w) of the patch grid for ``"tokens"``.
    """

    kind: str
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Return the output as (B, C, h, w); differentiable and linear (gradients map alike)."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid  # type: ignore[misc]
        if t.shape[1] != self.prefix_tokens + h * w:
            raise ConfigError(
                f"token layer gave {t.shape[1]} tokens, expected {self.prefix_tokens}+{h}x{w}; " + GRID_HINT
            )
        patches = t[:, self.prefix_tokens:, :]
        return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {"kind": self.kind, "prefix_tokens": self.prefix_tokens,
                "grid": list(self.grid) if self.grid else None}


def token_hints(model: nn.Module) -> dict[str, Any]:
    """Grid and prefix-token count a ViT-like model declares (timm and torchvision attributes)."""
    hints: dict[str, Any] = {}
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int):
        hints["prefix_tokens"] = prefix
    embed = getattr(model, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    if grid is not None and len(grid) == 2:
        hints["grid"] = (int(grid[0]), int(grid[1]))
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "class_token"):
        size, patch = getattr(model, "image_size", None), getattr(model, "patch_size", None)
        if isinstance(size, int) and isinstance(patch, int):
            hints["grid"] = (size // patch, size // patch)
            hints["prefix_tokens"] = 1
    return hints


def infer_layout(
    output: torch.Tensor,
    module: nn.Module | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    layout: str = "auto",
) -> SpatialLayout:
    """Infer how to turn ``output`` into a (B, C, h, w) map.

    Parameters
    ----------
    output : torch.Tensor
        A layer output: (B, C, H, W), (B, H, W, C) or (B, N, C).
    module : torch.nn.Module, optional
        The layer (a LayerNorm over the last axis means channels-last).
    input_size : tuple of int, optional
        (H, W) of the model input, to match the grid's aspect ratio.
    grid, prefix_tokens : optional
        Known token grid and prefix-token count (from :func:`token_hints` or the user).
    layout : str
        ``"auto"``, or force ``"nchw"``, ``"nhwc"`` or ``"tokens"``.

    Returns
    -------
    SpatialLayout
        The layout.

    Raises
    ------
    ConfigError
        The output cannot be read as a map, or the token grid is ambiguous.
    """
    if layout not in ("auto", "nchw", "nhwc", "tokens"):
        raise ConfigError(f"bad layout {layout!r}: expected auto, nchw, nhwc or tokens")
    if output.dim() == 4 and layout in ("auto", "nchw", "nhwc"):
        if layout != "auto":
            return SpatialLayout(layout)
        norm = getattr(module, "normalized_shape", None)
        if norm is not None and len(norm) >= 1 and norm[-1] == output.shape[-1] and norm[-1] != output.shape[1]:
            return SpatialLayout("nhwc")
        if output.shape[1] == output.shape[2] and output.shape[3] != output.shape[1]:
            return SpatialLayout("nhwc")
        return SpatialLayout("nchw")
    if output.dim() == 3 and layout in ("auto", "tokens"):
        return _token_layout(int(output.shape[1]), input_size, grid, prefix_tokens)
    raise ConfigError(
        f"cannot read a layer output of shape {tuple(output.shape)} as a spatial map "
        "(expected 4-D maps or 3-D token sequences)"
    )


def _token_layout(
    n: int, input_size: tuple[int, int] | None, grid: tuple[int, int] | None, prefix: int | None
) -> SpatialLayout:
    if grid is not None:
        h, w = grid
        k = n - h * w if prefix is None else prefix
        if k < 0 or k + h * w != n:
            raise ConfigError(f"{n} tokens do not fit a {h}x{w} grid with {k} prefix token(s)")
        return SpatialLayout("tokens", k, (h, w))
    aspect = (input_size[0], input_size[1]) if input_size else (1, 1)
    candidates = []
    for k in ([prefix] if prefix is not None else range(_MAX_PREFIX + 1)):
        m = n - k
        if m < 4:
            continue
        # h / w = H / W  =>  h = sqrt(m * H / W)
        h = round(math.sqrt(m * aspect[0] / aspect[1]))
        if h > 0 and m % h == 0 and h * aspect[1] == (m // h) * aspect[0]:
            candidates.append(SpatialLayout("tokens", k, (h, m // h)))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"cannot arrange {n} tokens in a grid; " + GRID_HINT)
    options = ", ".join(f"{c.prefix_tokens}+{c.grid[0]}x{c.grid[1]}" for c in candidates)  # type: ignore[index]
    raise ConfigError(f"ambiguous token grid for {n} tokens ({options}); " + GRID_HINT)
