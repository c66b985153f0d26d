"""Post-processing of raw class-activation maps into [0, 1] heatmaps at input resolution.

The default pipeline is the one pytorch-grad-cam uses, so maps match it numerically:

1. per layer and image: ``ReLU`` → min-max at feature resolution (``(m - min) / (max - min + eps)``,
   eps = 1e-7) → bilinear resize to the input size (``align_corners=False``, no antialias; equal to
   OpenCV's ``INTER_LINEAR``);
2. across layers: mean of the per-layer maps, then the same min-max again (also for one layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["EPS", "combine_layers", "minmax", "resize", "to_grid"]

#: The min-max epsilon pytorch-grad-cam uses.
EPS = 1e-7


def minmax(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-image min-max scaling, ``(m - min) / (eps + max(m - min))``.

    Parameters
    ----------
    maps : torch.Tensor
        (B, H, W) maps.
    eps : float
        Added to the range; a constant map becomes all zeros.

    Returns
    -------
    torch.Tensor
        (B, H, W) maps in [0, 1).
    """
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (eps + flat.max(dim=1, keepdim=True).values)
    return flat.view_as(maps)


def resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` = (H, W) (``align_corners=False``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def combine_layers(raw: Sequence[torch.Tensor], size: Sequence[int], eps: float = EPS) -> torch.Tensor:
    """Turn raw per-layer maps into one [0, 1] map per image at ``size``.

    Parameters
    ----------
    raw : sequence of torch.Tensor
        One (B, h_l, w_l) signed raw map per layer.
    size : sequence of int
        (H, W) of the model input.
    eps : float
        Min-max epsilon.

    Returns
    -------
    torch.Tensor
        (B, H, W) float maps in [0, 1].
    """
    per_layer = [resize(minmax(torch.relu(r.float()), eps), size) for r in raw]
    mean = torch.stack(per_layer, dim=1).clamp_min(0).mean(dim=1)
    return minmax(mean, eps)


def to_grid(maps: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Area-average (B, H, W) maps down to ``grid`` = (h, w) (used for rank statistics)."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    return F.adaptive_avg_pool2d(maps[:, None], tuple(grid))[:, 0]
