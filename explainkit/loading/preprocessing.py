"""Input preprocessing: resize, scale to [0, 1], normalise. Never guessed silently.

Each field is resolved on its own, in this order: explicit values (CLI, config, Python keyword),
the safetensors ``__metadata__`` of the file, the architecture's documented defaults (torchvision
weights metadata, timm ``pretrained_cfg``, explainkit's own models), else a clear error. The source
of every value is recorded in the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from explainkit.errors import ConfigError, ModelRefusedError
from explainkit.pixels import to_rgb

__all__ = ["Preprocessing", "arch_defaults", "resolve_preprocessing"]

RESIZE_MODES = ("center_crop", "stretch")
_FIELDS = ("input_size", "mean", "std", "resize")


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes a model input.

    Attributes
    ----------
    input_size : tuple of int
        ``(H, W)`` of the model input.
    mean, std : tuple of float
        Per-channel normalisation applied to RGB values in [0, 1].
    resize : str
        ``"center_crop"`` (shorter side to the input size, then a centre crop) or ``"stretch"``.
    sources : dict
        Where each value came from (``"cli"``, ``"safetensors metadata"``, ...).
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "center_crop"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def channels(self) -> int:
        """Input channels (3: RGB)."""
        return len(self.mean)

    def to_dict(self) -> dict:
        """JSON-ready description, including the sources."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["sources"] = dict(self.sources)
        return d

    def resize_image(self, image: Image.Image) -> Image.Image:
        """Resize (and crop) an RGB image to ``input_size`` with bilinear filtering.

        Parameters
        ----------
        image : PIL.Image.Image
            Any size and mode (converted to RGB by value range, :func:`explainkit.pixels.to_rgb`).

        Returns
        -------
        PIL.Image.Image
            ``input_size`` RGB image.
        """
        return self._fit(to_rgb(image) if image.mode != "RGB" else image)

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """A binary mask at image resolution mapped to the input's geometry like the image, (H, W) bool.

        Parameters
        ----------
        mask : ndarray
            (h, w) bool mask of the source image.

        Returns
        -------
        ndarray
            (H, W) bool: the mask resized (bilinear) and cropped as :meth:`resize_image` does, then > 0.5.
        """
        return np.asarray(self._fit(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, "L"))) > 127

    def resize_label_map(self, labels: np.ndarray) -> np.ndarray:
        """A label map at image resolution mapped to the input's geometry like the image, (H, W) int64.

        Parameters
        ----------
        labels : ndarray
            (h, w) class index per pixel of the source image, values 0..255.

        Returns
        -------
        ndarray
            (H, W) int64: resized with nearest-neighbour sampling (indices are never blended) and
            cropped as :meth:`resize_image` does.
        """
        image = Image.fromarray(np.asarray(labels, dtype=np.uint8), "L")
        return np.asarray(self._fit(image, Image.NEAREST), dtype=np.int64)

    def _fit(self, image: Image.Image, resample: int = Image.BILINEAR) -> Image.Image:
        h, w = self.input_size
        if self.resize == "stretch" or image.size == (w, h):
            return image.resize((w, h), resample) if image.size != (w, h) else image
        scale = max(h / image.height, w / image.width)
        rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
        image = image.resize((rw, rh), resample)
        left, top = (rw - w) // 2, (rh - h) // 2
        return image.crop((left, top, left + w, top + h))

    def to_unit_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize images and scale to [0, 1] without normalising.

        Parameters
        ----------
        images : sequence of PIL.Image.Image
            B images.

        Returns
        -------
        torch.Tensor
            (B, 3, H, W) float32 in [0, 1].
        """
        arrays = [np.asarray(self.resize_image(im), dtype=np.uint8) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return x.float().div_(255.0)

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        """Apply ``(x - mean) / std`` to a (B, 3, H, W) tensor in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
        return (unit - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: (B, 3, H, W) model input back to [0, 1] RGB."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * std + mean

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize, scale and normalise: (B, 3, H, W) float32 model input."""
        return self.normalize(self.to_unit_tensor(images))


def _as_size(value: object) -> tuple[int, int]:
    try:
        if isinstance(value, str):
            value = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
        if isinstance(value, int | np.integer):
            value = (int(value), int(value))
        seq = [int(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"bad input size {value!r}: expected N or H,W") from None
    if len(seq) == 3:  # (C, H, W) as timm writes it
        seq = seq[1:]
    if len(seq) == 1:
        seq = seq * 2
    if len(seq) != 2 or min(seq) < 8 or max(seq) > 8192:
        raise ConfigError(f"bad input size {value!r}: expected N or H,W with 8 <= N <= 8192")
    return seq[0], seq[1]


def _as_triple(value: object, name: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        seq = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"bad {name} {value!r}: expected three numbers R,G,B") from None
    if len(seq) != 3 or not all(np.isfinite(seq)):
        raise ConfigError(f"bad {name} {value!r}: expected three finite numbers R,G,B")
    if name == "std" and min(seq) <= 0:
        raise ConfigError(f"bad std {value!r}: values must be positive")
    return seq[0], seq[1], seq[2]


def _normalise_field(key: str, value: object) -> object:
    if key == "input_size":
        return _as_size(value)
    if key in ("mean", "std"):
        return _as_triple(value, key)
    if value not in RESIZE_MODES:
        raise ConfigError(f"bad resize mode {value!r}: expected one of {', '.join(RESIZE_MODES)}")
    return value


def metadata_preprocessing(metadata: Mapping[str, str], where: str = "the model file") -> dict[str, object]:
    """Read and validate preprocessing keys from safetensors ``__metadata__`` (string values, JSON or CSV).

    Raises
    ------
    ModelRefusedError
        A value is malformed or out of range (the model file is inconsistent; exit code 4).
    """
    out: dict[str, object] = {}
    for key in _FIELDS:
        name = key if metadata.get(key) is not None else f"explainkit.{key}"
        raw = metadata.get(name)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            value = raw
        try:
            out[key] = _normalise_field(key, value)
        except ConfigError as exc:
            raise ModelRefusedError(f"model metadata {name!r} of {where}: {exc}") from None
    return out


def arch_defaults(model: nn.Module, arch: str | None) -> dict[str, object]:
    """Documented preprocessing of a known architecture, or ``{}``.

    Parameters
    ----------
    model : torch.nn.Module
        The built model (timm models carry ``pretrained_cfg``; explainkit's own carry
        ``explainkit_preprocessing``).
    arch : str or None
        The architecture spec, e.g. ``torchvision:resnet18``.

    Returns
    -------
    dict
        Any of ``input_size``, ``mean``, ``std``, ``resize``.
    """
    own = getattr(model, "explainkit_preprocessing", None)
    if isinstance(own, Mapping):
        return dict(own)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and {"input_size", "mean", "std"} <= cfg.keys():
        return {"input_size": cfg["input_size"], "mean": cfg["mean"], "std": cfg["std"]}
    if arch and arch.startswith("torchvision:"):
        name = arch.split(":", 1)[1].split("(", 1)[0]
        try:
            import torchvision

            weights = torchvision.models.get_model_weights(name).DEFAULT
            tf = weights.transforms()
        except (ValueError, KeyError, AttributeError, TypeError):
            return {}
        size = getattr(tf, "crop_size", None)
        if size is None or not hasattr(tf, "mean"):
            return {}
        return {"input_size": size, "mean": tf.mean, "std": tf.std}
    return {}


def resolve_preprocessing(
    explicit: Mapping[str, object],
    *,
    metadata: Mapping[str, object] | None = None,
    defaults: Mapping[str, object] | None = None,
    defaults_source: str = "architecture defaults",
    required: bool = True,
) -> Preprocessing | None:
    """Resolve each preprocessing field from the first source that has it.

    Parameters
    ----------
    explicit : mapping
        Values given by the user (``None`` values are ignored).
    metadata : mapping, optional
        Values from the model file's metadata.
    defaults : mapping, optional
        The architecture's known defaults.
    defaults_source : str
        Label recorded for values taken from ``defaults``.
    required : bool
        Raise when input size, mean or std cannot be resolved (else return ``None``).

    Returns
    -------
    Preprocessing or None
        The resolved preprocessing.

    Raises
    ------
    ConfigError
        A value is malformed, or a required one is missing.
    """
    unknown = set(explicit) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown preprocessing option(s): {', '.join(sorted(unknown))}")
    layers = [("explicit", explicit), ("safetensors metadata", metadata or {}),
              (defaults_source, defaults or {})]
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for key in _FIELDS:
        for source, mapping in layers:
            if mapping.get(key) is not None:
                values[key] = _normalise_field(key, mapping[key])
                sources[key] = source
                break
    missing = [k for k in ("input_size", "mean", "std") if k not in values]
    if missing:
        if not required:
            return None
        raise ConfigError(
            f"preprocessing unknown: {', '.join(missing)} not given and not recorded for this model; "
            "pass --input-size N --mean R,G,B --std R,G,B (or set them in the config file)"
        )
    values.setdefault("resize", "center_crop")
    sources.setdefault("resize", "default")
    return Preprocessing(sources=sources, **values)  # type: ignore[arg-type]
