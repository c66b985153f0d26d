"""Spatial layouts (channels-first, channels-last, token grids) and the token grids of ViT-like models.

How a layout is *decided* from evidence is :mod:`explainkit.adapters.layout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["SpatialLayout", "token_hints", "token_layout"]

_MAX_PREFIX = 16
#: How to resolve a token grid (the gradcam, captum and prototypes analyzers take both parameters).
GRID_HINT = "pass the analyzer parameters grid=H|W and prefix_tokens=N (Python: grid=(h, w), prefix_tokens=N)"


@dataclass(frozen=True)
class SpatialLayout:
    """How to read a layer output as a spatial map.

    Attributes
    ----------
    kind : str
        ``"nchw"``: channels first, (B, C, H, W) (or (B, C, D, H, W) with ``rank`` 3);
        ``"nhwc"``: channels last, (B, H, W, C) (or (B, D, H, W, C)); ``"tokens"``: (B, N, C)
        sequences of prefix tokens then a row-major patch grid.
    prefix_tokens : int
        Tokens before the patch tokens (CLS, distillation, registers); dropped.
    grid : tuple of int or None
        Patch grid of ``"tokens"`` ((h, w), or (d, h, w) with ``rank`` 3).
    rank : int
        Number of spatial axes (2 for images, 3 for volumes).
    evidence : str
        How the layout was decided (``"module Conv2d"``, ``"input size"``, ``"probe"``, ``"given"``
        ...); not part of equality.
    """

    kind: str
    prefix_tokens: int = 0
    grid: tuple[int, ...] | None = None
    rank: int = 2
    evidence: str = field(default="", compare=False)

    @property
    def channel_axis(self) -> int:
        """Axis of the channels in the layer's own output (1, or -1 for channels-last and tokens)."""
        return 1 if self.kind == "nchw" else -1

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Return the output as (B, C, *spatial); differentiable, a permutation of entries (gradients map alike)."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.movedim(-1, 1)
        grid = tuple(self.grid)  # type: ignore[arg-type]
        if t.shape[1] != self.prefix_tokens + math.prod(grid):
            raise ConfigError(
                f"token layer gave {t.shape[1]} tokens, expected {self.prefix_tokens}+{'x'.join(map(str, grid))}; "
                + GRID_HINT
            )
        patches = t[:, self.prefix_tokens:, :]
        return patches.reshape(t.shape[0], *grid, t.shape[2]).movedim(-1, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {"kind": self.kind, "prefix_tokens": self.prefix_tokens,
                "grid": list(self.grid) if self.grid else None, "rank": self.rank, "evidence": self.evidence}


def token_hints(model: nn.Module, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Grid and prefix-token count a ViT-like model declares (timm and torchvision attributes).

    A timm model built with ``dynamic_img_size=True`` takes any input size, so its grid comes from
    the input size (``patch_embed.dynamic_feat_size``), not the fixed ``patch_embed.grid_size``;
    without ``input_size`` no grid is declared and the token count decides.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    input_size : tuple of int, optional
        (H, W) of the model input.

    Returns
    -------
    dict
        ``grid`` (h, w) and ``prefix_tokens`` where known.
    """
    hints: dict[str, Any] = {}
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int):
        hints["prefix_tokens"] = prefix
    embed = getattr(model, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    if getattr(model, "dynamic_img_size", False) is True:
        feat = getattr(embed, "dynamic_feat_size", None)
        grid = feat(tuple(input_size)) if callable(feat) and input_size is not None else None
    if grid is not None and len(grid) == 2:
        hints["grid"] = (int(grid[0]), int(grid[1]))
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "class_token"):
        size, patch = getattr(model, "image_size", None), getattr(model, "patch_size", None)
        if isinstance(size, int) and isinstance(patch, int):
            hints["grid"] = (size // patch, size // patch)
            hints["prefix_tokens"] = 1
    return hints


def token_layout(
    n: int, input_size: tuple[int, int] | None, grid: tuple[int, int] | None, prefix: int | None
) -> SpatialLayout:
    """The token layout of ``n`` tokens.

    The given grid, else the only grid (and prefix count) that has the input's aspect ratio.

    Parameters
    ----------
    n : int
        Tokens per image.
    input_size : tuple of int, optional
        (H, W) of the input (aspect ratio of the grid).
    grid : tuple of int, optional
        Known (h, w).
    prefix : int, optional
        Known prefix-token count.

    Returns
    -------
    SpatialLayout
        A ``"tokens"`` layout.

    Raises
    ------
    ConfigError
        The tokens do not fit the grid, or several grids fit.
    """
    if grid is not None:
        h, w = grid
        k = n - h * w if prefix is None else prefix
        if k < 0 or k + h * w != n:
            raise ConfigError(f"{n} tokens do not fit a {h}x{w} grid with {k} prefix token(s)")
        return SpatialLayout("tokens", k, (h, w), evidence="declared grid")
    aspect = (input_size[0], input_size[1]) if input_size else (1, 1)
    candidates = []
    for k in ([prefix] if prefix is not None else range(_MAX_PREFIX + 1)):
        m = n - k
        if m < 4:
            continue
        # h / w = H / W  =>  h = sqrt(m * H / W)
        h = round(math.sqrt(m * aspect[0] / aspect[1]))
        if h > 0 and m % h == 0 and h * aspect[1] == (m // h) * aspect[0]:
            candidates.append(SpatialLayout("tokens", k, (h, m // h), evidence="token count and input aspect"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"cannot arrange {n} tokens in a grid; " + GRID_HINT)
    options = ", ".join(f"{c.prefix_tokens}+{c.grid[0]}x{c.grid[1]}" for c in candidates)  # type: ignore[index]
    raise ConfigError(f"ambiguous token grid for {n} tokens ({options}); " + GRID_HINT)
