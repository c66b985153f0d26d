"""Simple image properties, and descriptive names for image-derived slices built from them.

An image-derived slice (a cluster of embeddings, the images a model looks outside the object
in) has no name. :func:`image_properties` measures a few properties every image has — brightness
and colour of the whole image, its border ring and its centre, how much one corner stands out
from the border, sharpness and colourfulness — and :func:`describe_contrast` says which of them
separate a slice's members from their reference images (Cohen's d), e.g. "border darker, overall
bluer". The description is a hint for a human reader, not evidence: the statistics of a
candidate are those of the model's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PROPERTIES", "Property", "describe_contrast", "image_properties", "phrase"]


@dataclass(frozen=True)
class Property:
    """One measured property.

    Attributes
    ----------
    name : str
        Key, e.g. ``border.brightness``.
    region : str
        ``overall``, ``border``, ``centre`` or ``corner``.
    more, less : str
        How members differ when their mean is higher / lower (``darker``, ``bluer``, ...).
    """

    name: str
    region: str
    more: str
    less: str


_REGIONS = ("overall", "border", "centre")
_CHANNEL_WORDS = {
    "brightness": ("brighter", "darker"),
    "redness": ("redder", "less red"),
    "greenness": ("greener", "less green"),
    "blueness": ("bluer", "yellower"),
}

#: The properties :func:`image_properties` returns, in column order.
PROPERTIES: tuple[Property, ...] = (
    *(Property(f"{r}.{c}", r, more, less) for r in _REGIONS for c, (more, less) in _CHANNEL_WORDS.items()),
    Property("corner.contrast", "corner", "a corner patch unlike the border", "plainer corners"),
    Property("overall.sharpness", "overall", "sharper (more edges)", "smoother"),
    Property("overall.colourfulness", "overall", "more colourful", "greyer"),
)


def _colour_stats(region: torch.Tensor) -> torch.Tensor:
    """(B, 4): brightness, redness, greenness, blueness of (B, 3, n) pixels in [0, 1]."""
    rgb = region.mean(2)
    r, g, b = rgb.unbind(1)
    return torch.stack([rgb.mean(1), r - (g + b) / 2, g - (r + b) / 2, b - (r + g) / 2], 1)


def image_properties(unit: torch.Tensor) -> torch.Tensor:
    """Measure :data:`PROPERTIES` on images.

    Parameters
    ----------
    unit : torch.Tensor
        (B, 3, H, W) RGB images in [0, 1] (model inputs before normalisation).

    Returns
    -------
    torch.Tensor
        (B, P) float32 on the CPU, columns as in :data:`PROPERTIES`. Colour values are in [0, 1]
        units: ``redness = R - (G + B) / 2`` etc. over the region; the border is the outer ring of
        width ``H / 8``, the centre the middle half; ``corner.contrast`` is the largest Euclidean
        RGB distance between a corner box (side ``H / 5``) and the border's mean colour;
        ``sharpness`` the mean absolute grey-level difference between neighbouring pixels;
        ``colourfulness`` the mean per-pixel ``max(RGB) - min(RGB)``.
    """
    x = unit.detach().float().clamp(0, 1)
    b, _, h, w = x.shape
    ring = max(1, min(h, w) // 8)
    border = torch.ones(h, w, dtype=torch.bool, device=x.device)
    border[ring : h - ring, ring : w - ring] = False
    flat = x.reshape(b, 3, h * w)
    centre = x[:, :, h // 4 : h - h // 4, w // 4 : w - w // 4].reshape(b, 3, -1)
    border_px = flat[:, :, border.reshape(-1)]
    cols = [_colour_stats(flat), _colour_stats(border_px), _colour_stats(centre)]
    side = max(2, min(h, w) // 5)
    border_rgb = border_px.mean(2)
    corners = [x[:, :, :side, :side], x[:, :, :side, -side:], x[:, :, -side:, :side], x[:, :, -side:, -side:]]
    dist = torch.stack([(c.mean((2, 3)) - border_rgb).norm(dim=1) for c in corners], 1)
    grey = x.mean(1)
    sharp = (grey.diff(dim=1).abs().mean((1, 2)) + grey.diff(dim=2).abs().mean((1, 2)))
    colourful = (x.amax(1) - x.amin(1)).mean((1, 2))
    out = torch.cat([*cols, dist.amax(1, keepdim=True), sharp[:, None], colourful[:, None]], 1)
    return out.cpu()


def describe_contrast(props: np.ndarray, member: np.ndarray, reference: np.ndarray, *, min_d: float = 0.8,
                      top: int = 2) -> list[dict]:
    """The properties that separate members from reference images, largest standardised difference first.

    Parameters
    ----------
    props : ndarray
        (N, P) from :func:`image_properties`.
    member, reference : ndarray
        (N,) bool: the two groups.
    min_d : float
        Smallest |Cohen's d| (pooled SD) reported.
    top : int
        At most this many properties.

    Returns
    -------
    list of dict
        ``{"property", "region", "phrase", "d", "member_mean", "reference_mean"}`` per property.
    """
    a, b = props[member], props[reference]
    if len(a) < 2 or len(b) < 2:
        return []
    va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
    pooled = np.sqrt(((len(a) - 1) * va + (len(b) - 1) * vb) / (len(a) + len(b) - 2))
    diff = a.mean(0) - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(pooled > 1e-9, diff / np.maximum(pooled, 1e-9), 0.0)
    out = []
    for j in np.argsort(-np.abs(d), kind="stable")[:top]:
        if abs(d[j]) < min_d:
            break
        p = PROPERTIES[j]
        out.append({"property": p.name, "region": p.region, "phrase": phrase(p, float(d[j])), "d": float(d[j]),
                    "member_mean": float(a[:, j].mean()), "reference_mean": float(b[:, j].mean())})
    return out


def phrase(prop: Property, d: float) -> str:
    """``"border darker"``, ``"overall bluer"``, ``"a corner patch unlike the border"``."""
    word = prop.more if d > 0 else prop.less
    return word if prop.region == "corner" else f"{prop.region} {word}"
