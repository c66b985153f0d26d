"""Counterfactual image transforms of a region and their neutral controls, on model-input images in [0, 1].

Each transform changes one property of a region and has a control that changes the same pixels
(or the same amount of image) in a way that should not matter if the model does not rely on that
property:

* :func:`recolour`: mix the region with a colour at a given strength; control: the same mix
  with the grey of the colour's luminance (same brightness change, no hue).
* :func:`swap_background`: keep the object, take the background from a donor image whose own
  object is inpainted away (Waterbirds-style); control: a donor of the image's own class.
  :func:`donor_backgrounds` removes both donors' objects through one shared hole (the union of
  their object masks, grown by a margin), so the two backgrounds are inpainted over the same
  pixels and differ only in what the donors' backgrounds show, not in the outline of a
  target-class or own-class object left behind.
* :func:`blur_region`: Gaussian blur inside the region; control: the same blur in a region of
  the same shape elsewhere (:func:`explainkit.gate.kinds.removal.shifted_mask`).
* :func:`retexture_region`: the region's texture smoothed away by non-local-means denoising (the
  prototype ``texture`` perturbation, :func:`explainkit.prototypes.perturb.remove_texture`);
  control: the same in a shifted region.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from explainkit.gate.kinds.masks import grow_mask
from explainkit.gate.kinds.removal import cover
from explainkit.prototypes.perturb import remove_texture

__all__ = ["LUMA", "blur_region", "donor_backgrounds", "luminance_grey", "recolour", "retexture_region",
           "swap_background"]

#: ITU-R BT.601 luma weights (as Pillow's ``convert("L")``).
LUMA = (0.299, 0.587, 0.114)


def luminance_grey(colour: torch.Tensor) -> torch.Tensor:
    """The grey of the same luma as ``colour``: (3,) → (3,) with equal channels."""
    y = sum(w * colour[c] for c, w in enumerate(LUMA))
    return torch.stack([y, y, y])


def recolour(image: torch.Tensor, region: torch.Tensor, colour: torch.Tensor, strength: float) -> torch.Tensor:
    """Mix the region with ``colour``: ``x' = x + strength * region * (colour - x)``.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) in [0, 1].
    region : torch.Tensor
        (H, W) bool or float weights in [0, 1].
    colour : torch.Tensor
        (3,) RGB in [0, 1].
    strength : float
        Mixing weight in [0, 1] (1 paints the region with the colour).

    Returns
    -------
    torch.Tensor
        (3, H, W).
    """
    w = strength * region.to(image.dtype)[None]
    return image + w * (colour.to(image)[:, None, None] - image)


def swap_background(image: torch.Tensor, obj: torch.Tensor, donor_background: torch.Tensor) -> torch.Tensor:
    """The object of ``image`` on ``donor_background``: ``x * obj + donor * (1 - obj)``.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) in [0, 1].
    obj : torch.Tensor
        (H, W) bool object mask of ``image``.
    donor_background : torch.Tensor
        (3, H, W) a background (a donor image with its own object removed).

    Returns
    -------
    torch.Tensor
        (3, H, W).
    """
    return torch.where(obj[None], image, donor_background.to(image))


def donor_backgrounds(donor: torch.Tensor, donor_obj: torch.Tensor, control: torch.Tensor,
                      control_obj: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The treated and control backgrounds of one background swap, inpainted over one shared hole.

    ``hole = grow(donor_obj, margin) | grow(control_obj, margin)``; both donors are inpainted
    (OpenCV Telea, :func:`explainkit.gate.kinds.removal.cover`) over ``hole``. The two
    backgrounds then differ only outside the hole, where each shows its own donor's background:
    neither keeps the silhouette or soft edge of its object, and the inpainted region has the same
    shape in both.

    Parameters
    ----------
    donor, control : torch.Tensor
        (3, H, W) in [0, 1]: the donor-class donor and the own-class control donor.
    donor_obj, control_obj : torch.Tensor
        (H, W) bool object masks of the two donors.
    margin : int
        Pixels each object mask is grown by (≥ 0): covers soft object edges a thresholded mask misses.

    Returns
    -------
    tuple of torch.Tensor
        (3, H, W) treated background, (3, H, W) control background.
    """
    hole = grow_mask(donor_obj, margin) | grow_mask(control_obj, margin)
    return cover(donor, hole, "inpaint"), cover(control, hole, "inpaint")


def blur_region(image: torch.Tensor, region: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (standard deviation ``sigma`` pixels, kernel ``2 ceil(3 sigma) + 1``) inside the region.

    The whole image is blurred with reflected borders and the region's pixels taken from it.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) in [0, 1].
    region : torch.Tensor
        (H, W) bool.
    sigma : float
        Blur scale in model-input pixels (> 0).

    Returns
    -------
    torch.Tensor
        (3, H, W); pixels outside the region are unchanged.
    """
    half = math.ceil(3 * sigma)
    limit = min(image.shape[1:]) - 1
    k = 2 * min(half, limit) + 1
    blurred = gaussian_blur(image[None], [k, k], [sigma, sigma])[0]
    return torch.where(region[None], blurred, image)


def retexture_region(image: torch.Tensor, region: torch.Tensor, **params: float) -> torch.Tensor:
    """The prototype ``texture`` perturbation (non-local-means denoising) inside the region.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) in [0, 1]; denoised as an 8-bit image.
    region : torch.Tensor
        (H, W) bool.
    **params
        ``h``, ``h_color``, ``template_window``, ``search_window`` of
        :func:`explainkit.prototypes.perturb.remove_texture`.

    Returns
    -------
    torch.Tensor
        (3, H, W); pixels outside the region are unchanged.
    """
    from PIL import Image

    arr = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    smooth = remove_texture(Image.fromarray(arr, "RGB"), **params)
    out = torch.from_numpy(np.asarray(smooth).copy()).permute(2, 0, 1).to(image.device, image.dtype) / 255
    return torch.where(region[None], out, image)
