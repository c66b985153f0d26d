"""Post-processing of raw class-activation maps into [0, 1] heatmaps at input resolution.

The default pipeline is the one pytorch-grad-cam uses, so maps match it numerically:

1. per layer and image: ``ReLU`` → min-max at feature resolution (``(m - min) / (max - min + eps)``,
   eps = 1e-7) → bilinear resize to the input size (``align_corners=False``, no antialias; equal to
   OpenCV's ``INTER_LINEAR``);
2. across layers: mean of the per-layer maps, then the same min-max again (also for one layer).

Volumes: every function takes (B, d, h, w) maps as well; resizing is then trilinear
(``align_corners=False``). pytorch-grad-cam 1.5.7 resizes volumes with ``scipy.ndimage.zoom``
(a cubic spline, which overshoots [0, 1]); trilinear is the 3-D analogue of its 2-D bilinear
resize, so depth-1 volumes give exactly the 2-D maps. The two agree wherever no resize happens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["EPS", "combine_layers", "interpolate", "minmax", "resize", "to_grid"]

#: The min-max epsilon pytorch-grad-cam uses.
EPS = 1e-7


def minmax(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-image min-max scaling, ``(m - min) / (eps + max(m - min))``.

    Parameters
    ----------
    maps : torch.Tensor
        (B, H, W) maps (or (B, D, H, W) volumes).
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


#: Interpolation mode per number of spatial axes.
_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def interpolate(maps: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """(B, K, *spatial) stacks resized to ``size`` (bilinear for 2 axes, trilinear for 3)."""
    if len(size) not in _MODES or maps.dim() != len(size) + 2:
        raise ValueError(f"cannot resize maps of shape {tuple(maps.shape)} to {tuple(size)}")
    return F.interpolate(maps, size=tuple(size), mode=_MODES[len(size)], align_corners=align_corners)


def resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize of (B, h, w) maps to ``size`` = (H, W), or (B, d, h, w) to (D, H, W) (``align_corners=False``)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return interpolate(maps[:, None], size)[:, 0]


def combine_layers(raw: Sequence[torch.Tensor], size: Sequence[int], eps: float = EPS) -> torch.Tensor:
    """Turn raw per-layer maps into one [0, 1] map per image at ``size``.

    Parameters
    ----------
    raw : sequence of torch.Tensor
        One (B, h_l, w_l) (or (B, d_l, h_l, w_l)) signed raw map per layer.
    size : sequence of int
        (H, W) (or (D, H, W)) of the model input.
    eps : float
        Min-max epsilon.

    Returns
    -------
    torch.Tensor
        (B, H, W) (or (B, D, H, W)) float maps in [0, 1].
    """
    per_layer = [resize(minmax(torch.relu(r.float()), eps), size) for r in raw]
    mean = torch.stack(per_layer, dim=1).clamp_min(0).mean(dim=1)
    return minmax(mean, eps)


def to_grid(maps: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Area-average (B, H, W) maps down to ``grid`` = (h, w), or volumes to (d, h, w) (rank statistics)."""
    if tuple(maps.shape[1:]) == tuple(grid):
        return maps
    pool = F.adaptive_avg_pool3d if len(grid) == 3 else F.adaptive_avg_pool2d
    return pool(maps[:, None], tuple(grid))[:, 0]
