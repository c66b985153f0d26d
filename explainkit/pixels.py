"""Turn a PIL image of any mode into 8-bit RGB by the value range of its mode.

``Image.convert("RGB")`` clips 16- and 32-bit values to 0..255 instead of scaling them (a 16-bit
PNG comes out almost white), drops alpha without compositing, and its CMYK conversion is a choice
of Pillow's. Probe images are decoded here instead, from their raw values:

=================  =================================================================================
mode               value range → 0..255
=================  =================================================================================
``1``              {0, 1} → {0, 255}
``L``, ``RGB``     0..255, unchanged
``P``, ``PA``      the palette's RGB (with its transparency, see alpha)
``I;16*``          0..65535 (16-bit PNG and TIFF), scaled by 255 / 65535
``I``              0..65535 as well (Pillow's mode for 16-bit files); values outside are clipped
``F``              0.0..1.0 (floating-point TIFF), clipped
``CMYK``           ``255 (1 - C/255) (1 - K/255)`` per channel (no colour profile)
``YCbCr``, others  Pillow's conversion to RGB
alpha              ``LA``, ``La``, ``RGBA``, ``RGBa``, ``PA`` and palette transparency are composited
                   on :data:`BACKGROUND` (white)
=================  =================================================================================

Every result is rounded to the nearest integer.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["BACKGROUND", "to_rgb"]

#: The colour transparent pixels are composited on.
BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT = 65535.0


def _grey_to_rgb(values: np.ndarray, full_scale: float) -> Image.Image:
    grey = np.rint(np.clip(values.astype(np.float64) / full_scale, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> Image.Image:
    w = alpha.astype(np.float64)[..., None] / 255.0
    out = rgb.astype(np.float64) * w + np.asarray(background, np.float64) * (1.0 - w)
    return Image.fromarray(np.rint(out).astype(np.uint8))


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The 8-bit RGB picture an image of any PIL mode shows (see the module docstring).

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode (the first frame of a multi-frame file).
    background : tuple of int
        RGB that transparent pixels are composited on.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, same size.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode == "I":
        return _grey_to_rgb(np.asarray(image), _SIXTEEN_BIT)
    if mode == "F":
        return _grey_to_rgb(np.asarray(image), 1.0)
    if mode == "CMYK":
        c = np.asarray(image).astype(np.float64) / 255.0
        rgb = 255.0 * (1.0 - c[..., :3]) * (1.0 - c[..., 3:4])
        return Image.fromarray(np.rint(rgb).astype(np.uint8))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")  # palette lookup only
        if not has_alpha:
            return image
        mode = "RGBA"
    if mode in ("La", "RGBa"):
        image = image.convert("LA" if mode == "La" else "RGBA")  # un-premultiply
        mode = image.mode
    if mode in ("LA", "RGBA"):
        a = np.asarray(image)
        rgb = np.repeat(a[..., :1], 3, axis=2) if mode == "LA" else a[..., :3]
        return _composite(rgb, a[..., -1], background)
    return image.convert("RGB")  # 1, L, YCbCr, LAB, HSV: Pillow's exact conversions
