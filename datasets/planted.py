"""Planted worlds: one image characteristic of Nauta et al. decides the class, everything else is random.

Each image shows one object on an achromatic background. Its shape, hue, saturation, brightness,
texture, size and position and the background are drawn independently per image, except the
*planted* characteristic, whose value is the class. The worlds are built so that the default
perturbation of the prototypes analyzer (:mod:`explainkit.prototypes.perturb`) moves an image of
one class towards another class, i.e. a model that relies on the planted characteristic *must*
react to its perturbation:

==============  =====================  =============================================================
planted         classes                how the classes differ (the default perturbation in brackets)
==============  =====================  =============================================================
``shape``       circle, square,        the object's outline (sine warp, 4 px at 64 px: the outline
                triangle               wobbles)
``hue``         orange, red            hue in [-8°, 8°] vs [27°, 43°], 35° apart (hue +35.2°: red
                                       becomes orange)
``texture``     grain, plain           fine Gaussian grain (sigma 8) over the whole image vs none
                                       (non-local means removes the grain)
``contrast``    high, low              the whole image blended with its mean grey at a factor in
                                       [0.85, 1] vs [0.3, 0.5] (contrast 0.45)
``saturation``  pale, vivid            HSV saturation in [0.2, 0.4] vs [0.5, 0.65] (saturation 0.7
                                       brings most vivid objects below 0.5)
``warmth``      cool, warm             hue family: [150°, 270°] vs [-30°, 50°] (the colour-family
                                       world of issue 19; hue +35° mostly stays within a family)
==============  =====================  =============================================================

Non-planted characteristics vary as they would in ordinary data (no augmentation aimed at the
perturbations): hue uniform on the circle, saturation in [0.5, 0.9], brightness in [0.6, 0.95],
coarse textures (plain, stripes, dots) of amplitude 30, three backgrounds, no global contrast change.
Image ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from explainkit._io import atomic_write_text
from explainkit.datasets.synthetic import BACKGROUNDS, _shape_alpha, _texture
from explainkit.errors import ConfigError

__all__ = ["PLANTED", "PlantedSpec", "render_planted", "write_planted"]

#: Planted characteristic → class names (sorted, as a probe folder orders them).
PLANTED: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "hue": ("orange", "red"),
    "texture": ("grain", "plain"),
    "contrast": ("high", "low"),
    "saturation": ("pale", "vivid"),
    "warmth": ("cool", "warm"),
}
#: Which perturbation a model relying on the planted characteristic must react to most.
EXPECTED = {"shape": "shape", "hue": "hue", "texture": "texture", "contrast": "contrast",
            "saturation": "saturation", "warmth": "hue"}
_HUE = {"red": (-8.0, 8.0), "orange": (27.0, 43.0), "warm": (-30.0, 50.0), "cool": (150.0, 270.0)}
_SATURATION = {"pale": (0.2, 0.4), "vivid": (0.5, 0.65)}
_CONTRAST = {"high": (0.85, 1.0), "low": (0.3, 0.5)}
_SHAPES = ("circle", "square", "triangle", "cross")
_COARSE = ("plain", "stripes", "dots")
GRAIN_SIGMA = 8.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
COARSE_AMPLITUDE = 30.0


@dataclass(frozen=True)
class PlantedSpec:
    """A planted world.

    Attributes
    ----------
    planted : str
        The characteristic that decides the class (a key of :data:`PLANTED`).
    n_images : int
        Images; image ``i`` has class ``i % n_classes``.
    size : int
        Image side in pixels.
    seed : int
        Image ``i`` is drawn from ``default_rng([seed, i])``.
    """

    planted: str = "shape"
    n_images: int = 240
    size: int = 64
    seed: int = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes (the planted characteristic's values)."""
        return PLANTED[self.planted]

    def validate(self) -> None:
        """Raise :class:`ConfigError` for bad parameters."""
        if self.planted not in PLANTED:
            raise ConfigError(f"planted must be one of {', '.join(PLANTED)}, not {self.planted!r}")
        if not 16 <= self.size <= 512 or self.n_images < len(self.class_names):
            raise ConfigError("size must be in 16..512 and n_images at least the number of classes")


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def render_planted(spec: PlantedSpec, i: int) -> tuple[Image.Image, int, dict]:
    """Image ``i`` of a planted world, its class index and its factors.

    Parameters
    ----------
    spec : PlantedSpec
        The world.
    i : int
        Image index.

    Returns
    -------
    image : PIL.Image.Image
        (size, size) RGB image.
    label : int
        Class index.
    factors : dict
        The drawn values (shape, hue in degrees, saturation, value, texture, background, contrast).
    """
    rng = np.random.default_rng([spec.seed, i])
    label = i % len(spec.class_names)
    cls = spec.class_names[label]
    p = spec.planted
    f = {
        "shape": cls if p == "shape" else _SHAPES[rng.integers(len(_SHAPES))],
        "hue": _uniform(rng, _HUE[cls]) % 360 if p in ("hue", "warmth") else float(rng.uniform(0, 360)),
        "saturation": _uniform(rng, _SATURATION[cls]) if p == "saturation" else float(rng.uniform(0.5, 0.9)),
        "value": float(rng.uniform(0.6, 0.95)),
        "texture": _COARSE[rng.integers(len(_COARSE))],
        "grain": p == "texture" and cls == "grain",
        "background": tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        "contrast": _uniform(rng, _CONTRAST[cls]) if p == "contrast" else 1.0,
    }
    size = spec.size
    bg = np.empty((size, size, 3), np.float32)
    bg[:] = BACKGROUNDS[f["background"]]
    if f["background"] == "bg_noise":
        low = rng.normal(0, 1, size=(max(2, size // 8),) * 2).astype(np.float32)
        blobs = np.asarray(Image.fromarray(((low + 3) * 40).clip(0, 255).astype(np.uint8))
                           .resize((size, size), Image.BICUBIC), np.float32)[..., None]
        bg = bg * 0.5 + blobs * 0.5
    colour = 255.0 * np.array(colorsys.hsv_to_rgb(f["hue"] / 360.0, f["saturation"], f["value"]), np.float32)
    tex = _texture(f["texture"], size, rng, COARSE_AMPLITUDE)
    r = rng.uniform(0.22, 0.30) * size
    cx, cy = (0.5 + rng.uniform(-0.1, 0.1, size=2)) * size
    alpha = _shape_alpha(f["shape"], size, cx, cy, r)[..., None]
    img = bg * (1 - alpha) + (colour[None, None, :] + tex[..., None]) * alpha
    if f["grain"]:
        img = img + GRAIN_SIGMA * rng.standard_normal((size, size, 1)).astype(np.float32)
    img = img.clip(0, 255)
    if f["contrast"] != 1.0:  # luminance contrast only: luma scaled about its mean, chroma kept
        luma = img @ _LUMA
        img = img + ((luma.mean() + f["contrast"] * (luma - luma.mean())) - luma)[..., None]
    image = Image.fromarray(img.clip(0, 255).round().astype(np.uint8), "RGB")
    return image, label, f


def write_planted(spec: PlantedSpec, root: str | Path) -> Path:
    """Write a planted world as a probe folder ``root/<class>/img_NNNNN.png`` plus ``world.json``.

    Parameters
    ----------
    spec : PlantedSpec
        The world.
    root : str or Path
        Output folder (created; must be empty or absent).

    Returns
    -------
    Path
        ``root``.
    """
    spec.validate()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"output folder {root} is not empty")
    for name in spec.class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(spec.n_images):
        image, label, f = render_planted(spec, i)
        sid = f"{spec.class_names[label]}/img_{i:05d}.png"
        image.save(root / sid)
        samples.append({"id": sid, **f})
    meta = {"spec": asdict(spec), "class_names": list(spec.class_names), "samples": samples}
    atomic_write_text(root / "world.json", json.dumps(meta, indent=1))
    return root
