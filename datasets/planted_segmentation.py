"""A planted segmentation world: two object classes that differ only in hue, on an achromatic background.

Every image holds one ``orange`` and one ``red`` object (which one is on the left is drawn per
image) on one of the synthetic world's three backgrounds; the label map marks each pixel
``background`` (0), ``orange`` (1) or ``red`` (2). Shape, size, position, saturation, brightness and
coarse texture of each object are drawn independently, as in the planted classification worlds
(:mod:`explainkit.datasets.planted`); only the hue tells the two object classes apart: red in
[-8°, 8°], orange in [27°, 43°], so the prototypes analyzer's hue shift (+35.2°) turns red into
orange. A segmentation model must therefore rely on hue inside the object regions, and its
prototypes of the object classes should respond most to hue when analysed on their class's region.
Image ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from explainkit.datasets.planted import _COARSE, _HUE, _SHAPES, COARSE_AMPLITUDE
from explainkit.datasets.synthetic import BACKGROUNDS, _shape_alpha, _texture
from explainkit.errors import ConfigError

__all__ = ["SEGMENTATION_CLASSES", "SegmentationSpec", "planted_segmentation", "render_segmentation"]

#: Class names in label order.
SEGMENTATION_CLASSES = ("background", "orange", "red")


@dataclass(frozen=True)
class SegmentationSpec:
    """A planted segmentation world.

    Attributes
    ----------
    n_images : int
        Number of images.
    size : int
        Image side in pixels.
    seed : int
        Seed (image ``i`` depends only on ``(seed, i)``).
    """

    n_images: int = 256
    size: int = 64
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` on impossible settings."""
        if self.n_images < 1 or self.size < 32:
            raise ConfigError("a segmentation world needs at least one image of at least 32 px")


def render_segmentation(spec: SegmentationSpec, i: int) -> tuple[Image.Image, np.ndarray]:
    """Image ``i`` and its label map.

    Returns
    -------
    image : PIL.Image.Image
        (size, size) RGB image.
    labels : ndarray
        (size, size) uint8 class of every pixel (:data:`SEGMENTATION_CLASSES`).
    """
    rng = np.random.default_rng([spec.seed, i])
    size = spec.size
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]]
    labels = np.zeros((size, size), np.uint8)
    sides = (0.27, 0.73) if rng.random() < 0.5 else (0.73, 0.27)
    for cls, side in zip((1, 2), sides):
        hue = float(rng.uniform(*_HUE[SEGMENTATION_CLASSES[cls]])) % 360
        colour = 255.0 * np.array(colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.95)),
                                  np.float32)
        tex = _texture(_COARSE[rng.integers(len(_COARSE))], size, rng, COARSE_AMPLITUDE)
        r = rng.uniform(0.13, 0.2) * size
        cx, cy = (side + rng.uniform(-0.04, 0.04)) * size, rng.uniform(0.3, 0.7) * size
        alpha = _shape_alpha(_SHAPES[rng.integers(len(_SHAPES))], size, cx, cy, r)
        img = img * (1 - alpha[..., None]) + (colour[None, None, :] + tex[..., None]) * alpha[..., None]
        labels[alpha >= 0.5] = cls
    return Image.fromarray(img.clip(0, 255).round().astype(np.uint8), "RGB"), labels


def planted_segmentation(spec: SegmentationSpec) -> tuple[list[Image.Image], np.ndarray]:
    """All images of a world and their (N, size, size) uint8 label maps."""
    spec.validate()
    pairs = [render_segmentation(spec, i) for i in range(spec.n_images)]
    return [p[0] for p in pairs], np.stack([p[1] for p in pairs])
