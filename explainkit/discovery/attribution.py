"""How much of an explanation map lies outside the object, and where."""

from __future__ import annotations

import torch

__all__ = ["outside_attribution"]


def outside_attribution(maps: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map mass outside the object beyond the area outside it, and its place on a 3×3 grid.

    Parameters
    ----------
    maps : torch.Tensor
        (B, H, W) non-negative explanation maps (e.g. Grad-CAM in [0, 1]).
    objects : torch.Tensor
        (B, H, W) bool object masks at the same resolution.

    Returns
    -------
    excess : torch.Tensor
        (B,) ``sum(map * outside) / sum(map) - mean(outside)``: positive when the map puts more of
        its mass outside the object than a map spread evenly would. NaN for an all-zero map or an
        empty / full mask.
    grid : torch.Tensor
        (B, 9) share of the outside mass in each cell of a 3×3 grid (row by row; rows sum to 1;
        NaN where there is no outside mass).
    """
    maps = maps.detach().double().clamp_min(0)
    outside = (~objects.bool()).double()
    b, h, w = maps.shape
    total = maps.sum((1, 2))
    area = outside.mean((1, 2))
    out_mass = maps * outside
    excess = out_mass.sum((1, 2)) / total - area
    undefined = (total <= 0) | (area <= 0) | (area >= 1)
    excess = torch.where(undefined, torch.full_like(excess, float("nan")), excess)
    rows = torch.div(torch.arange(h, device=maps.device) * 3, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w, device=maps.device) * 3, w, rounding_mode="floor")
    cell = (rows[:, None] * 3 + cols[None, :]).reshape(-1)
    grid = torch.zeros(b, 9, dtype=maps.dtype, device=maps.device)
    grid.index_add_(1, cell, out_mass.reshape(b, -1))
    grid = grid / grid.sum(1, keepdim=True)
    return excess.float().cpu(), grid.float().cpu()
