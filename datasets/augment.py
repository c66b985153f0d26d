"""Training augmentations that randomise the characteristics a synthetic world's class does not depend on.

A world alone does not make a model *ignore* its other characteristics (a model that never saw a
low-contrast image is not contrast-invariant), so the validation recipes randomise contrast,
brightness, saturation, hue and small sine warps with tensor-space augmentations written here,
independently of the prototypes analyzer's perturbations.
"""

from __future__ import annotations

import math

import torch

from explainkit.datasets.protopnet import Augment

__all__ = ["YIQ", "nuisance_augmentation"]


def _luminance(u: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of (B, 3, H, W) images in [0, 1]."""
    return 0.299 * u[:, 0:1] + 0.587 * u[:, 1:2] + 0.114 * u[:, 2:3]


#: RGB → YIQ; a rotation of the (I, Q) plane rotates hue and keeps luminance.
YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def nuisance_augmentation(contrast: float | None = None, brightness: float | None = None,
                          saturation: float | None = None, warp: float | None = None, hue: bool = False) -> Augment:
    """An augmentation of (B, 3, H, W) synthetic-world inputs (mean = std = 0.5).

    Parameters
    ----------
    contrast, brightness, saturation : float, optional
        Random factors in [value, 1] per image (``None``: unchanged).
    warp : float, optional
        Random-phase sine warps of up to this many pixels (rows, then columns, period 40 px).
    hue : bool
        Random hue rotations (a rotation of the YIQ chroma plane, which keeps luminance).

    Returns
    -------
    callable
        ``(inputs, generator) -> augmented inputs``.
    """

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        u = x * 0.5 + 0.5  # the synthetic preprocessing: mean = std = 0.5
        b, _, h, w = u.shape

        def factor(low: float) -> torch.Tensor:
            return low + (1 - low) * torch.rand(b, 1, 1, 1, generator=g)

        if contrast is not None:
            mean = _luminance(u).mean(dim=(2, 3), keepdim=True)
            u = mean + factor(contrast) * (u - mean)
        if brightness is not None:
            u = u * factor(brightness)
        if saturation is not None:
            grey = _luminance(u)
            u = grey + factor(saturation) * (u - grey)
        if hue:
            angle = (2 * torch.rand(b, generator=g) - 1) * math.pi
            rot = torch.zeros(b, 3, 3)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
            rot[:, 2, 1], rot[:, 2, 2] = torch.sin(angle), torch.cos(angle)
            u = torch.einsum("bij,bjhw->bihw", torch.linalg.inv(YIQ) @ rot @ YIQ, u)
        if warp is not None:
            amp = warp * torch.rand(b, 1, generator=g)
            phase = 2 * math.pi * torch.rand(b, 2, generator=g)
            row_shift = (amp * torch.sin(math.pi * 0.05 * torch.arange(h) + phase[:, :1])).long()  # (b, h)
            col_shift = (amp * torch.sin(math.pi * 0.05 * torch.arange(w) + phase[:, 1:])).long()  # (b, w)
            cols = (torch.arange(w)[None, None] - row_shift[:, :, None]) % w
            u = u.gather(3, cols[:, None].expand(-1, 3, -1, -1))
            rows = (torch.arange(h)[None, :, None] - col_shift[:, None, :]) % h
            u = u.gather(2, rows[:, None].expand(-1, 3, -1, -1))
        return (u.clamp(0, 1) - 0.5) / 0.5

    return augment
