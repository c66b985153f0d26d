"""The five (plus one) image characteristics of Nauta et al. (2021), perturbed in memory.

Each perturbation takes an RGB PIL image at its source resolution and returns a new one of the
same size; the model's own preprocessing (resize, normalise) is applied afterwards, exactly as the
reference implementation (``M-Nauta/Explaining_Prototypes``, final generation) does.

* ``hue`` (``factor=0.1``): Pillow HSV, 8-bit: ``H += uint8(int(factor * 255))`` with wrap-around
  (+25/256 of the hue circle, about 35°), as ``torchvision.transforms.ColorJitter(hue=[f, f])`` on
  a PIL image.
* ``contrast`` (``factor=0.45``): ``PIL.ImageEnhance.Contrast(img).enhance(factor)`` — a blend
  with the mean-luminance grey image (ColorJitter's contrast on PIL).
* ``saturation`` (``factor=0.7``): ``PIL.ImageEnhance.Color(img).enhance(factor)`` — a blend with
  the greyscale image.
* ``brightness`` (``factor=0.8``, off by default): ``PIL.ImageEnhance.Brightness``.
* ``shape`` (``amplitude=4``, ``w=0.05``): sine warp — row ``i`` is rolled horizontally by
  ``int(A sin(pi w i))`` pixels, then column ``j`` of the result vertically by
  ``int(A sin(pi w j))``; pixels wrap around the border.
* ``texture`` (``h=4``, ``h_color=4``, ``template_window=7``, ``search_window=21``): non-local-means
  denoising, ``cv2.fastNlMeansDenoisingColored`` on the BGR array.

The reference wrote every perturbed image to disk as JPEG (Pillow for the colour perturbations,
OpenCV for shape and texture) and read it back, so its deltas include re-compression effects.
``jpeg=True`` emulates that round trip (Pillow quality 75 / OpenCV quality 95, the libraries'
defaults); the default is the exact in-memory perturbation.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from explainkit.errors import ConfigError

__all__ = [
    "CHARACTERISTICS",
    "DEFAULT_CHARACTERISTICS",
    "DEFAULT_PARAMS",
    "Perturbation",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "jpeg_roundtrip",
    "make_perturbations",
    "perturb",
    "remove_texture",
    "shift_hue",
    "sine_warp",
]

#: Every characteristic :func:`perturb` knows, in report order.
CHARACTERISTICS = ("hue", "shape", "texture", "contrast", "saturation", "brightness")
#: The paper's five characteristics (brightness is available but off by default).
DEFAULT_CHARACTERISTICS = ("hue", "shape", "texture", "contrast", "saturation")
#: Reference parameters (``preprocessing/mod_values.py`` of the final generation).
DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "hue": {"factor": 0.1},
    "shape": {"amplitude": 4.0, "w": 0.05},
    "texture": {"h": 4.0, "h_color": 4.0, "template_window": 7, "search_window": 21},
    "contrast": {"factor": 0.45},
    "saturation": {"factor": 0.7},
    "brightness": {"factor": 0.8},
}
#: Which library re-encoded each characteristic's images in the reference (for ``jpeg=True``).
_JPEG_CODEC = {"hue": "pillow", "contrast": "pillow", "saturation": "pillow", "brightness": "pillow",
               "shape": "opencv", "texture": "opencv"}
#: Default JPEG quality of each codec (Pillow's ``save`` default, OpenCV's ``imwrite`` default).
_JPEG_QUALITY = {"pillow": 75, "opencv": 95}


def _rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ConfigError(f"perturb needs a PIL image, not {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def shift_hue(image: Image.Image, factor: float = 0.1) -> Image.Image:
    """Rotate the hue in Pillow's 8-bit HSV space (torchvision ``adjust_hue`` on PIL).

    Parameters
    ----------
    image : PIL.Image.Image
        RGB image.
    factor : float
        Fraction of the hue circle in [-0.5, 0.5]; the 8-bit hue channel is shifted by
        ``uint8(int(factor * 255))`` with wrap-around.

    Returns
    -------
    PIL.Image.Image
        RGB image of the same size.
    """
    if not -0.5 <= factor <= 0.5:
        raise ConfigError(f"hue factor must be in [-0.5, 0.5], not {factor}")
    h, s, v = _rgb(image).convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    hue += np.array(int(factor * 255)).astype(np.uint8)  # wraps around modulo 256
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def adjust_contrast(image: Image.Image, factor: float = 0.45) -> Image.Image:
    """Blend with the mean-luminance grey image: ``m + factor * (x - m)`` (Pillow ``ImageEnhance``)."""
    return ImageEnhance.Contrast(_rgb(image)).enhance(_non_negative(factor, "contrast"))


def adjust_saturation(image: Image.Image, factor: float = 0.7) -> Image.Image:
    """Blend with the greyscale image: ``L + factor * (x - L)`` (Pillow ``ImageEnhance.Color``)."""
    return ImageEnhance.Color(_rgb(image)).enhance(_non_negative(factor, "saturation"))


def adjust_brightness(image: Image.Image, factor: float = 0.8) -> Image.Image:
    """Scale every value: ``factor * x`` (Pillow ``ImageEnhance.Brightness``)."""
    return ImageEnhance.Brightness(_rgb(image)).enhance(_non_negative(factor, "brightness"))


def _non_negative(factor: float, name: str) -> float:
    if not np.isfinite(factor) or factor < 0:
        raise ConfigError(f"{name} factor must be a finite number >= 0, not {factor}")
    return float(factor)


def sine_warp(image: Image.Image, amplitude: float = 4.0, w: float = 0.05) -> Image.Image:
    """The reference's shape perturbation: sinusoidal row shifts, then column shifts, wrapping.

    Row ``i`` is rolled horizontally by ``s(i) = int(amplitude * sin(pi * w * i))`` pixels
    (truncation toward zero; positive moves content right), then column ``j`` of the result is
    rolled vertically by ``s(j)`` (positive moves content down). Pixels leaving one border enter
    at the opposite one. The period is ``2 / w`` pixels.

    Parameters
    ----------
    image : PIL.Image.Image
        RGB image (H, W) at source resolution.
    amplitude : float
        Maximum displacement in source pixels.
    w : float
        Frequency: the shift of row ``i`` uses ``sin(pi * w * i)``.

    Returns
    -------
    PIL.Image.Image
        RGB image of the same size.
    """
    if not (np.isfinite(amplitude) and np.isfinite(w)):
        raise ConfigError("shape amplitude and w must be finite numbers")
    arr = np.asarray(_rgb(image))
    height, width = arr.shape[:2]
    row_shift = _shifts(height, amplitude, w)
    col_shift = _shifts(width, amplitude, w)
    cols = (np.arange(width)[None, :] - row_shift[:, None]) % width  # (H, W) source column per pixel
    rows_warped = np.take_along_axis(arr, cols[..., None], axis=1)
    rows = (np.arange(height)[:, None] - col_shift[None, :]) % height  # (H, W) source row per pixel
    out = np.take_along_axis(rows_warped, rows[..., None], axis=0)
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _shifts(n: int, amplitude: float, w: float) -> np.ndarray:
    return np.array([int(amplitude * np.sin(np.pi * w * i)) for i in range(n)], dtype=np.int64)


def remove_texture(image: Image.Image, h: float = 4.0, h_color: float = 4.0, template_window: int = 7,
                   search_window: int = 21) -> Image.Image:
    """Non-local-means denoising of the BGR array (``cv2.fastNlMeansDenoisingColored``).

    Parameters
    ----------
    image : PIL.Image.Image
        RGB image.
    h, h_color : float
        Filter strength of the luminance and colour components.
    template_window, search_window : int
        Odd window sides in pixels (patch compared; area searched).

    Returns
    -------
    PIL.Image.Image
        RGB image of the same size.
    """
    for name, v in (("template_window", template_window), ("search_window", search_window)):
        if int(v) != v or v < 1 or v % 2 == 0:
            raise ConfigError(f"texture {name} must be an odd positive integer, not {v}")
    if h < 0 or h_color < 0:
        raise ConfigError("texture h and h_color must be >= 0")
    bgr = np.ascontiguousarray(np.asarray(_rgb(image))[..., ::-1])
    out = cv2.fastNlMeansDenoisingColored(bgr, None, float(h), float(h_color), int(template_window),
                                          int(search_window))
    return Image.fromarray(np.ascontiguousarray(out[..., ::-1]), "RGB")


def jpeg_roundtrip(image: Image.Image, codec: str = "pillow", quality: int | None = None) -> Image.Image:
    """Encode as JPEG with Pillow or OpenCV and decode with Pillow (the reference's disk round trip).

    Parameters
    ----------
    image : PIL.Image.Image
        RGB image.
    codec : str
        ``"pillow"`` (``Image.save``) or ``"opencv"`` (``cv2.imencode`` of the BGR array).
    quality : int, optional
        JPEG quality; default the codec's own default (Pillow 75, OpenCV 95).

    Returns
    -------
    PIL.Image.Image
        The decoded RGB image.
    """
    if codec not in _JPEG_QUALITY:
        raise ConfigError(f"unknown JPEG codec {codec!r}: expected pillow or opencv")
    q = _JPEG_QUALITY[codec] if quality is None else int(quality)
    if not 1 <= q <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, not {q}")
    rgb = _rgb(image)
    if codec == "pillow":
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=q)
        data = buf.getvalue()
    else:
        ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(np.asarray(rgb)[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:  # pragma: no cover - OpenCV cannot fail on a valid uint8 array
            raise ConfigError("OpenCV could not encode the image as JPEG")
        data = enc.tobytes()
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


_FUNCTIONS: dict[str, Callable[..., Image.Image]] = {
    "hue": shift_hue, "contrast": adjust_contrast, "saturation": adjust_saturation,
    "brightness": adjust_brightness, "shape": sine_warp, "texture": remove_texture,
}


def _params(characteristic: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if characteristic not in _FUNCTIONS:
        raise ConfigError(f"unknown characteristic {characteristic!r}; choose from {', '.join(CHARACTERISTICS)}")
    defaults = DEFAULT_PARAMS[characteristic]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown parameter(s) for {characteristic}: {', '.join(unknown)} "
                          f"(expected {', '.join(defaults)})")
    return {**defaults, **overrides}


def perturb(image: Image.Image, characteristic: str, *, jpeg: bool = False, jpeg_quality: int | None = None,
            **params: Any) -> Image.Image:
    """Perturb one characteristic of an image, as Nauta et al. (2021) do.

    Parameters
    ----------
    image : PIL.Image.Image
        The image at its source resolution (converted to RGB).
    characteristic : str
        ``"hue"``, ``"shape"``, ``"texture"``, ``"contrast"``, ``"saturation"`` or ``"brightness"``.
    jpeg : bool
        Emulate the reference's JPEG re-encoding of the perturbed image (see the module docstring).
    jpeg_quality : int, optional
        Override the codec's default quality when ``jpeg`` is set.
    **params
        The characteristic's parameters (defaults in :data:`DEFAULT_PARAMS`): ``factor`` for hue,
        contrast, saturation and brightness; ``amplitude`` and ``w`` for shape; ``h``, ``h_color``,
        ``template_window`` and ``search_window`` for texture.

    Returns
    -------
    PIL.Image.Image
        A new RGB image of the same size.

    Raises
    ------
    ConfigError
        Unknown characteristic or parameter, or a value out of range.

    Examples
    --------
    >>> from PIL import Image
    >>> import explainkit
    >>> img = Image.new("RGB", (32, 32), (200, 40, 40))
    >>> explainkit.perturb(img, "hue").getpixel((0, 0))
    (200, 134, 40)
    """
    resolved = _params(characteristic, params)
    out = _FUNCTIONS[characteristic](_rgb(image), **resolved)
    if jpeg:
        out = jpeg_roundtrip(out, _JPEG_CODEC[characteristic], jpeg_quality)
    return out


@dataclass(frozen=True)
class Perturbation:
    """One configured characteristic: a callable ``PIL -> PIL`` with its resolved parameters.

    Attributes
    ----------
    name : str
        The characteristic.
    params : dict
        Its parameters (defaults filled in).
    jpeg : bool
        Whether the JPEG round trip is emulated.
    jpeg_quality : int or None
        Quality override for the round trip.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    jpeg: bool = False
    jpeg_quality: int | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        """Perturb ``image``."""
        return perturb(image, self.name, jpeg=self.jpeg, jpeg_quality=self.jpeg_quality, **self.params)

    def describe(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"characteristic": self.name, **self.params, "jpeg": self.jpeg,
                **({"jpeg_quality": self.jpeg_quality} if self.jpeg else {})}


def make_perturbations(characteristics: tuple[str, ...] | list[str] = DEFAULT_CHARACTERISTICS,
                       params: Mapping[str, Mapping[str, Any]] | None = None, *, jpeg: bool = False,
                       jpeg_quality: int | None = None) -> list[Perturbation]:
    """Configured perturbations, validated up front.

    Parameters
    ----------
    characteristics : sequence of str
        Which characteristics, in order (no duplicates).
    params : mapping, optional
        Per characteristic, parameter overrides, e.g. ``{"hue": {"factor": 0.2}}``.
    jpeg, jpeg_quality
        See :func:`perturb`.

    Returns
    -------
    list of Perturbation
        One per characteristic.

    Raises
    ------
    ConfigError
        Unknown or repeated characteristics, unknown parameters, or out-of-range values.
    """
    chars = list(characteristics)
    if not chars or len(set(chars)) != len(chars):
        raise ConfigError("characteristics must be a non-empty list without repeats")
    params = dict(params or {})
    extra = sorted(set(params) - set(chars))
    if extra:
        raise ConfigError(f"parameters given for characteristic(s) not analysed: {', '.join(extra)}")
    out = [Perturbation(c, _params(c, params.get(c, {})), jpeg, jpeg_quality) for c in chars]
    probe = Image.new("RGB", (8, 8), (128, 64, 32))
    for p in out:  # fail on bad values before any image is processed
        p(probe)
    return out
