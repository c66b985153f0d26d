"""Report images for explanation maps: the model's view of an image, heatmap overlays, volume slices."""

from __future__ import annotations

import numpy as np
from PIL import Image

from explainkit.loading.preprocessing import Preprocessing
from explainkit.report.images import colorize, thumbnail, to_data_uri

__all__ = ["PLANES", "THUMB_PX", "example_assets", "input_view", "overlay_uri", "quantize", "sample_view",
           "slice_views", "view_uri"]

#: Side of the report thumbnails (the brief's limit is 160 px).
THUMB_PX = 128


def input_view(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The RGB image as the model sees it (resized / cropped to the input size), (H, W, 3) uint8."""
    return np.asarray(prep.resize_image(image), dtype=np.uint8)


def sample_view(sample: Image.Image | np.ndarray, prep: Preprocessing) -> np.ndarray:
    """What an example shows of a probe sample as the model sees it.

    An image: :func:`input_view`, (H, W, 3) uint8. A volume ((C, D, H, W), fed as stored): its
    first channel, (D, H, W) float32.
    """
    if isinstance(sample, np.ndarray):
        return np.asarray(sample[0], np.float32)
    return input_view(sample, prep)


def example_assets(key: str, view: np.ndarray, maps: dict[str, np.ndarray]
                   ) -> tuple[dict[str, object], dict[str, str]]:
    """An example's report fields and image assets: overlays for an image, slice views for a volume.

    Parameters
    ----------
    key : str
        Prefix of the asset names.
    view : ndarray
        :func:`sample_view`: (H, W, 3) uint8 image or (D, H, W) volume.
    maps : dict of str to ndarray
        Method → uint8 map (:func:`quantize`) of the view's spatial shape.

    Returns
    -------
    fields : dict
        An image: ``input`` (its asset) and ``overlays`` (``method``, ``asset``). A volume: ``input``
        ``None``, no overlays, and ``views`` (``method``, ``plane``, ``index``, ``asset``: three slices
        per method through its map's peak, :func:`slice_views`).
    assets : dict
        Asset name → data URI.
    """
    if view.ndim == 3 and view.shape[-1] == 3 and view.dtype == np.uint8:
        assets = {f"{key}_input": view_uri(view), **{f"{key}_{m}": overlay_uri(view, h) for m, h in maps.items()}}
        return {"input": f"{key}_input", "overlays": [{"method": m, "asset": f"{key}_{m}"} for m in maps]}, assets
    assets, views = {}, []
    for m, heat in maps.items():
        for v in slice_views(view, np.asarray(heat, np.float64) / 255.0):
            name = f"{key}_{m}_{v['plane']}"
            assets[name] = str(v["uri"])
            views.append({"method": m, "plane": v["plane"], "index": v["index"], "asset": name})
    return {"input": None, "overlays": [], "views": views}, assets


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


#: The orthogonal planes of :func:`slice_views`: name → the (D, H, W) axis held fixed.
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}


def _grey(plane: np.ndarray) -> np.ndarray:
    """A 2-D slice min-max scaled to an (h, w, 3) uint8 grey image (a constant slice is black)."""
    lo, hi = float(plane.min()), float(plane.max())
    scaled = (plane - lo) / (hi - lo) if hi > lo else np.zeros_like(plane)
    return np.repeat(quantize(scaled)[..., None], 3, axis=2)


def slice_views(volume: np.ndarray, heat: np.ndarray, at: tuple[int, int, int] | None = None
                ) -> list[dict[str, object]]:
    """Overlays of a volume map on three orthogonal slices through one voxel.

    Parameters
    ----------
    volume : ndarray
        (D, H, W) intensities (one channel of the model input).
    heat : ndarray
        (D, H, W) map in [0, 1].
    at : tuple of int, optional
        (d, h, w) voxel the slices pass through; default the map's maximum (first in C order).

    Returns
    -------
    list of dict
        Per plane of :data:`PLANES`: ``plane``, ``index`` (the fixed coordinate) and ``uri`` (JPEG data
        URI of the map over the grey slice, at most :data:`THUMB_PX` px).
    """
    volume, heat = np.asarray(volume, np.float64), np.asarray(heat, np.float64)
    if volume.ndim != 3 or volume.shape != heat.shape:
        raise ValueError(f"slice views need (D, H, W) volume and map of one shape, got {volume.shape}, {heat.shape}")
    point = tuple(int(i) for i in (np.unravel_index(int(np.argmax(heat)), heat.shape) if at is None else at))
    views = []
    for plane, axis in PLANES.items():
        index = point[axis]
        grey = _grey(np.take(volume, index, axis=axis))
        views.append({"plane": plane, "index": index,
                      "uri": overlay_uri(grey, quantize(np.take(heat, index, axis=axis)))})
    return views
