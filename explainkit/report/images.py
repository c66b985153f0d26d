"""Images for reports: thumbnails, heatmap overlays and data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["colorize", "overlay", "thumbnail", "to_data_uri"]


def to_data_uri(image: Image.Image, fmt: str = "png", quality: int = 85) -> str:
    """Encode ``image`` as a ``data:`` URI (``png``, ``jpeg`` or ``webp``).

    Parameters
    ----------
    image : PIL.Image.Image
        The image.
    fmt : str
        Encoding; PNG for exact pixels, JPEG/WebP for photos and overlays.
    quality : int
        Lossy quality.

    Returns
    -------
    str
        ``data:image/...;base64,...``.
    """
    buf = io.BytesIO()
    fmt = fmt.lower()
    pil_fmt = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}[fmt]
    if pil_fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    image.save(buf, format=pil_fmt, **({"quality": quality} if pil_fmt != "PNG" else {"optimize": True}))
    mime = "jpeg" if pil_fmt == "JPEG" else fmt
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(image: Image.Image, max_side: int = 128) -> Image.Image:
    """Resize so the longer side is ``max_side`` (nearest-neighbour upscaling for tiny images)."""
    w, h = image.size
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)


def colorize(values: np.ndarray, cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0) -> Image.Image:
    """Map a 2-D array to an RGB image with a perceptually uniform colormap.

    Parameters
    ----------
    values : ndarray
        (H, W) values.
    cmap : str
        A matplotlib colormap name (``viridis`` for magnitudes, ``RdBu_r`` for signed maps).
    vmin, vmax : float
        Range mapped to the ends of the colormap.

    Returns
    -------
    PIL.Image.Image
        RGB image.
    """
    from matplotlib import colormaps

    v = np.clip((np.asarray(values, np.float64) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    rgba = colormaps[cmap](np.nan_to_num(v))
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8), "RGB")


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5, cmap: str = "viridis") -> Image.Image:
    """Blend a [0, 1] heatmap over an RGB image (heatmap resized to the image)."""
    heat_img = colorize(heat, cmap).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat_img, alpha)
