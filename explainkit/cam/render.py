"""Report images for explanation maps: the model's view of an image and heatmap overlays."""

from __future__ import annotations

import numpy as np
from PIL import Image

from explainkit.loading.preprocessing import Preprocessing
from explainkit.report.images import colorize, thumbnail, to_data_uri

__all__ = ["THUMB_PX", "input_view", "overlay_uri", "quantize", "view_uri"]

#: Side of the report thumbnails (the brief's limit is 160 px).
THUMB_PX = 128


def input_view(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The RGB image as the model sees it (resized / cropped to the input size), (H, W, 3) uint8."""
    return np.asarray(prep.resize_image(image), dtype=np.uint8)


def quantize(heat: np.ndarray) -> np.ndarray:
    """[0, 1] map → uint8 (what the report keeps of an example map)."""
    return np.clip(np.round(np.asarray(heat, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def view_uri(view: np.ndarray) -> str:
    """PNG data URI of an (H, W, 3) uint8 input view, at most :data:`THUMB_PX` px."""
    return to_data_uri(thumbnail(Image.fromarray(view, "RGB"), THUMB_PX), "png")


def overlay_uri(view: np.ndarray, heat_u8: np.ndarray) -> str:
    """JPEG data URI of a heatmap (uint8, input resolution) over the input view.

    The heatmap's opacity grows with its value (0.15 to 0.8), so low-relevance regions keep the
    image visible and only the relevant ones are covered by the colour map.
    """
    base = thumbnail(Image.fromarray(view, "RGB"), THUMB_PX)
    heat = np.asarray(Image.fromarray(heat_u8, "L").resize(base.size, Image.BILINEAR), np.float64) / 255.0
    colour = np.asarray(colorize(heat, "viridis"), np.float64)
    alpha = (0.15 + 0.65 * heat)[..., None]
    blend = np.asarray(base, np.float64) * (1 - alpha) + colour * alpha
    return to_data_uri(Image.fromarray(blend.round().astype(np.uint8), "RGB"), "jpeg", quality=88)
