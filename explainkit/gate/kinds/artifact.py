"""Artifact templates and how they are pasted: placements, alpha compositing and control patches.

Everything happens on model-input images in [0, 1] (after resize and crop, before normalisation):
the template is pasted at its own pixel size, so a template made for the probe images' resolution
keeps its size when the model's input size equals it (as for the synthetic worlds).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from explainkit.errors import ConfigError

__all__ = ["CONTROLS", "PLACEMENTS", "ArtifactTemplate", "composite", "control_colours", "placements"]

#: Where the artifact goes: anywhere it fits, the centre, a fixed corner, or a random corner per repeat.
PLACEMENTS = ("random", "center", "corner:any", "corner:top-left", "corner:top-right", "corner:bottom-left",
              "corner:bottom-right")
#: Control patches pasted with the artifact's alpha at the same place.
CONTROLS = ("mean_patch", "grey_patch", "shuffled_pixels")
_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class ArtifactTemplate:
    """An RGBA artifact: colour and alpha (where it is pasted).

    Attributes
    ----------
    rgb : torch.Tensor
        (3, h, w) colours in [0, 1].
    alpha : torch.Tensor
        (1, h, w) opacity in [0, 1] (all ones for templates without an alpha channel).
    path : Path
        The template file.
    sha256 : str
        Hash of the file's bytes.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    path: Path
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> ArtifactTemplate:
        """Read an image file as a template.

        Raises
        ------
        ConfigError
            Unreadable file, or a template whose alpha is zero everywhere.
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ConfigError(f"cannot read artifact template {path}: {exc}") from None
        t = torch.from_numpy(rgba).permute(2, 0, 1).contiguous()
        if not bool((t[3] > 0).any()):
            raise ConfigError(f"artifact template {path.name} is fully transparent (alpha = 0 everywhere)")
        return cls(rgb=t[:3], alpha=t[3:], path=path, sha256=hashlib.sha256(raw).hexdigest())

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` in pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    def check_fits(self, input_size: tuple[int, int]) -> None:
        """Raise :class:`ConfigError` when the template is larger than the model input."""
        h, w = self.size
        if h > input_size[0] or w > input_size[1]:
            raise ConfigError(f"artifact template {self.path.name} is {h}×{w} px, larger than the model input "
                              f"{input_size[0]}×{input_size[1]}; templates are pasted at their own size")

    def describe(self) -> dict:
        """JSON-ready provenance."""
        h, w = self.size
        return {"path": str(self.path), "sha256": self.sha256, "size": [h, w],
                "opaque_fraction": float((self.alpha > 0).float().mean())}


def placements(rng: np.random.Generator, placement: str, image_hw: tuple[int, int], patch_hw: tuple[int, int],
               repeats: int) -> np.ndarray:
    """Top-left corners of ``repeats`` placements.

    Parameters
    ----------
    rng : numpy.random.Generator
        Randomness (derive it per image for results independent of batching).
    placement : str
        One of :data:`PLACEMENTS`. Corners keep a margin of ``max(1, side // 32)`` pixels.
    image_hw, patch_hw : tuple of int
        Image and patch sizes.
    repeats : int
        Number of placements.

    Returns
    -------
    ndarray
        (repeats, 2) int64 ``(y, x)``.
    """
    (H, W), (h, w) = image_hw, patch_hw
    if placement == "random":
        return np.stack([rng.integers(0, H - h + 1, repeats), rng.integers(0, W - w + 1, repeats)], 1)
    if placement == "center":
        return np.tile([(H - h) // 2, (W - w) // 2], (repeats, 1)).astype(np.int64)
    m = max(1, min(H, W) // 32)
    m_y, m_x = min(m, H - h), min(m, W - w)
    spots = {"top-left": (m_y, m_x), "top-right": (m_y, W - w - m_x), "bottom-left": (H - h - m_y, m_x),
             "bottom-right": (H - h - m_y, W - w - m_x)}
    corner = placement.split(":", 1)[1]
    if corner == "any":
        picks = rng.integers(0, len(_CORNERS), repeats)
        return np.array([spots[_CORNERS[k]] for k in picks], dtype=np.int64)
    return np.tile(spots[corner], (repeats, 1)).astype(np.int64)


def composite(image: torch.Tensor, rgb: torch.Tensor, alpha: torch.Tensor, yx: tuple[int, int]) -> torch.Tensor:
    """Paste ``rgb`` with opacity ``alpha`` into a copy of ``image`` at ``yx``.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) in [0, 1].
    rgb : torch.Tensor
        (3, h, w) patch colours.
    alpha : torch.Tensor
        (1, h, w) opacity.
    yx : tuple of int
        Top-left corner.

    Returns
    -------
    torch.Tensor
        (3, H, W): ``image * (1 - alpha) + rgb * alpha`` inside the patch, ``image`` elsewhere.
    """
    y, x = int(yx[0]), int(yx[1])
    h, w = rgb.shape[1:]
    out = image.clone()
    region = out[:, y : y + h, x : x + w]
    region.mul_(1 - alpha).add_(rgb * alpha)
    return out


def control_colours(control: str, image: torch.Tensor, template: ArtifactTemplate, yx: tuple[int, int],
                    rng: np.random.Generator) -> torch.Tensor:
    """Colours of the control patch (pasted with the template's alpha at the same place).

    Parameters
    ----------
    control : str
        ``mean_patch``: the alpha-weighted mean colour of the image region the artifact covers (a
        neutral occluder); ``grey_patch``: mid grey; ``shuffled_pixels``: the artifact's own
        colours, permuted among its non-transparent pixels (same colour statistics, no structure).
    image : torch.Tensor
        (3, H, W) clean image in [0, 1].
    template : ArtifactTemplate
        The artifact.
    yx : tuple of int
        Top-left corner of the placement.
    rng : numpy.random.Generator
        Randomness of the permutation.

    Returns
    -------
    torch.Tensor
        (3, h, w) colours.
    """
    rgb, alpha = template.rgb.to(image.device), template.alpha.to(image.device)
    h, w = template.size
    if control == "grey_patch":
        return torch.full_like(rgb, 0.5)
    if control == "mean_patch":
        y, x = int(yx[0]), int(yx[1])
        region = image[:, y : y + h, x : x + w]
        mean = (region * alpha).sum((1, 2)) / alpha.sum()
        return mean[:, None, None].expand(3, h, w).clone()
    if control == "shuffled_pixels":
        flat = rgb.reshape(3, -1).clone()
        opaque = torch.nonzero(alpha.reshape(-1) > 0).flatten()
        perm = torch.from_numpy(rng.permutation(opaque.numel())).to(opaque.device)
        flat[:, opaque] = flat[:, opaque[perm]]
        return flat.reshape(3, h, w)
    raise ConfigError(f"unknown control {control!r}; expected one of {', '.join(CONTROLS)}")
